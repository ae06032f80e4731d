"""Even padding of spatial axes (sliding windows and the networks' multiples) and its exact inverse."""
import torch

from diffens_auto.diffusion.padding import even_pads, pad_evenly, unpad


def test_extra_voxels_are_split_with_the_larger_half_after():
    assert even_pads([0, 1, 2, 5]) == [(0, 0), (0, 1), (1, 1), (2, 3)]


def test_pad_then_unpad_returns_the_volume_and_the_border_holds_the_value():
    volume = torch.arange(2 * 3 * 5 * 4 * 3, dtype=torch.float32).reshape(2, 3, 5, 4, 3)
    padded, pads = pad_evenly(volume, [3, 0, 2], value=-7.0)
    assert padded.shape == (2, 3, 8, 4, 5) and pads == [(1, 2), (0, 0), (1, 1)]
    assert torch.equal(unpad(padded, pads), volume)
    assert torch.all(padded[:, :, 0] == -7.0) and torch.all(padded[:, :, -2:] == -7.0)
    assert torch.all(padded[..., 0] == -7.0) and torch.all(padded[..., -1] == -7.0)


def test_nothing_to_pad_returns_the_same_tensor():
    volume = torch.zeros(1, 1, 4, 4, 4)
    padded, pads = pad_evenly(volume, [0, 0, 0])
    assert padded is volume and pads == [(0, 0)] * 3
