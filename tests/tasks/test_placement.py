"""A prepared case's position coordinates are those training gives it: the crop's frame, the case centred in it."""
import numpy as np
import pytest
import torch

from diffens_auto.diffusion.slicing import position_channels
from diffens_auto.tasks.placement import case_positions, draw_placement


@pytest.mark.parametrize("case_shape, pads, crop, step", [
    ((20, 30, 18), ((2, 2), (1, 1), (3, 3)), (32, 40, 32), (1, 1, 1)),    # smaller than the crop, padded
    ((24, 28, 16), ((0, 0), (2, 2), (0, 0)), (32, 40, 32), (4, 4, 4)),    # block-aligned placement
    ((32, 40, 32), ((0, 0), (0, 0), (0, 0)), (32, 40, 32), (2, 2, 2)),    # exactly the crop
])
def test_the_case_gets_the_validation_placements_cut_of_the_crop_coordinates(case_shape, pads, crop, step):
    positions = case_positions(case_shape, pads, crop, step)
    assert positions.shape == (1, 3, *[n + a + b for n, (a, b) in zip(case_shape, pads)])
    offset = draw_placement(case_shape, crop, step, np.random.default_rng(0), centred=True)
    crop_coordinates = position_channels(crop, dtype=torch.float64)
    inner = tuple(slice(a, a + n) for n, (a, _) in zip(case_shape, pads))
    placed = tuple(slice(o, o + n) for o, n in zip(offset, case_shape))
    torch.testing.assert_close(positions[(slice(None), slice(None), *inner)].double(),
                               crop_coordinates[(slice(None), slice(None), *placed)], atol=1e-6, rtol=0)


def test_a_case_larger_than_the_crop_continues_the_coordinates_linearly():
    positions = case_positions((40, 8, 8), ((0, 0),) * 3, (32, 8, 8), (1, 1, 1))[0, 0, :, 0, 0].double()
    steps = positions.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, 2 / 31))
    # centred: the crop's -1..1 sits in the middle, 4 voxels on either side beyond it
    assert positions[4].item() == pytest.approx(-1.0) and positions[35].item() == pytest.approx(1.0)


def test_a_kspace_task_has_no_block_grid():
    from diffens_auto.tasks.placement import block_step
    kspace = {"type": "kspace", "mask": "uniform1d", "acceleration": 4.0, "acs": 12, "slice_axis": 0,
              "noise_std": 0.0, "mask_per_slice": True}
    assert block_step({"degradation": kspace}) == (1, 1, 1)
    assert block_step({"degradation": None}) == (1, 1, 1)
    assert block_step({"degradation": {"type": "avgpool", "factor": [4, 2, 1]}}) == (4, 2, 1)
