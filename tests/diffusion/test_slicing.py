"""Slicing a volume for a 2D expert and restacking: exact round trips, context stacks, and slice batching
equal to a plain per-slice loop on every plane."""
import pytest
import torch
from torch import nn

from diffens_auto.diffusion.slicing import (ExpertRunner, context_stack, expert_frame, position_channels, restack,
                                            slices_of)

PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}


class StandInExpert(nn.Module):
    """A small 2D expert with the real interface: (x, t) -> (eps (n, 1, a, b), features at /1, /2, /4)."""

    def __init__(self, in_channels, width=4, levels=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(levels - 1))
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x, t):
        h = torch.tanh(self.inp(x) + 0.01 * t.float()[:, None, None, None])
        features = [h]
        for down in self.downs:
            features.append(torch.tanh(down(features[-1])))
        return self.out(h), features


def loop_reference(expert, y_t, condition, t, slice_axis, context, positions=None):
    """Per-slice Python loop: the expert on one slice at a time, outputs placed by hand."""
    dim = 2 + slice_axis
    size = y_t.shape[dim]
    eps, features = torch.zeros_like(y_t), None
    for b in range(y_t.shape[0]):
        for s in range(size):
            parts = [y_t[b:b + 1].select(dim, s)]
            for c in range(condition.shape[1]):
                for k in range(-context, context + 1):
                    parts.append(condition[b:b + 1, c:c + 1].select(dim, min(max(s + k, 0), size - 1)))
            if positions is not None:
                parts.append((positions[b:b + 1] if positions.shape[0] > 1 else positions).select(dim, s))
            out, feats = expert(torch.cat(parts, dim=1), torch.tensor([int(t[b])]))
            eps[b:b + 1].select(dim, s).copy_(out)
            if features is None:
                features = []
                for f in feats:
                    shape = list(f.shape[2:])
                    shape.insert(slice_axis, size)
                    features.append(torch.zeros(y_t.shape[0], f.shape[1], *shape))
            for volume, f in zip(features, feats):
                volume[b:b + 1].select(dim, s).copy_(f)
    return eps, features


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_slices_round_trip_exact(slice_axis):
    volume = torch.randn(2, 3, 5, 6, 7)
    slices = slices_of(volume, slice_axis)
    size = volume.shape[2 + slice_axis]
    in_plane = [s for i, s in enumerate(volume.shape[2:]) if i != slice_axis]
    assert slices.shape == (2 * size, 3, *in_plane)
    # batch-major rows; slice s of element b is the volume at index s along the slice axis
    assert torch.equal(slices[size + 2], volume[1].select(1 + slice_axis, 2))
    assert torch.equal(restack(slices, slice_axis, batch=2), volume)


def test_in_plane_axes_keep_their_order():
    volume = torch.arange(4 * 5 * 6.).reshape(1, 1, 4, 5, 6)
    assert slices_of(volume, 2).shape[2:] == (4, 5)    # axial (X, Y)
    assert slices_of(volume, 1).shape[2:] == (4, 6)    # coronal (X, Z)
    assert slices_of(volume, 0).shape[2:] == (5, 6)    # sagittal (Y, Z)
    assert torch.equal(slices_of(volume, 1)[3], volume[0, :, :, 3, :])


def test_restack_rejects_indivisible_batch():
    with pytest.raises(ValueError):
        restack(torch.zeros(7, 1, 4, 4), 2, batch=2)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_context_stack_edge_replicated_in_slice_order(slice_axis):
    condition = torch.randn(2, 2, 4, 5, 3)
    dim = 2 + slice_axis
    size = condition.shape[dim]
    stacked = context_stack(condition, slice_axis, 2)
    assert stacked.shape[1] == 2 * 5
    for c in range(2):
        for j, k in enumerate(range(-2, 3)):
            for s in range(size):
                expected = condition[:, c].select(dim - 1, min(max(s + k, 0), size - 1))
                assert torch.equal(stacked[:, c * 5 + j].select(dim - 1, s), expected)
    assert torch.equal(context_stack(condition, slice_axis, 0), condition)
    some = torch.tensor([size - 1, 0])
    assert torch.equal(context_stack(condition, slice_axis, 1, some), context_stack(condition, slice_axis, 1)
                       .index_select(dim, some))


def test_position_channels_global_coordinates():
    positions = position_channels((3, 5, 1))
    assert positions.shape == (1, 3, 3, 5, 1)
    assert torch.equal(positions[0, 0, :, 0, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(positions[0, 1, 0, :, 0], torch.linspace(-1, 1, 5))
    assert torch.equal(positions[0, 2], torch.zeros(3, 5, 1))      # a single voxel sits at the centre
    with pytest.raises(ValueError):
        position_channels((3, 3, 3), channels=2)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("context", [0, 1])
def test_slice_batches_equal_per_slice_loop(slice_axis, context):
    y_t, condition = torch.randn(2, 1, 8, 12, 4), torch.randn(2, 2, 8, 12, 4)
    t = torch.tensor([5, 900])
    expert = StandInExpert(1 + 2 * (1 + 2 * context)).eval()
    with torch.no_grad():
        eps_ref, features_ref = loop_reference(expert, y_t, condition, t, slice_axis, context)
    size = y_t.shape[2 + slice_axis]
    for batch_size in (1, 3, 2 * size):   # 3 spans two batch elements; 2 * size is every slice at once
        runner = ExpertRunner(expert, slice_axis, batch_size, context_slices=context)
        eps, features = runner(y_t, condition, t, want_features=True)
        assert eps.shape == (2, 1, 8, 12, 4)
        assert (eps - eps_ref).abs().max() <= 1e-5
        assert len(features) == 3
        for level, (f, f_ref) in enumerate(zip(features, features_ref)):
            expected = [-(-s // 2 ** level) if i != slice_axis else s for i, s in enumerate((8, 12, 4))]
            assert f.shape == (2, 4, *expected)
            assert (f - f_ref).abs().max() <= 1e-5
        assert not eps.requires_grad
    eps_only, none = runner(y_t, condition, t)
    assert none is None and torch.equal(eps_only, eps)


@pytest.mark.parametrize("slice_axis", [0, 2])
def test_runner_positions_and_condition_selection(slice_axis):
    y_t, condition = torch.randn(1, 1, 8, 8, 4), torch.randn(1, 3, 8, 8, 4)
    expert = StandInExpert(1 + 1 + 3).eval()
    runner = ExpertRunner(expert, slice_axis, 5, position_channels=3, condition_indices=[2])
    eps, _ = runner(y_t, condition, 7)
    with torch.no_grad():
        eps_ref, _ = loop_reference(expert, y_t, condition[:, 2:], torch.tensor([7]), slice_axis, 0,
                                    positions=position_channels((8, 8, 4)))
    assert (eps - eps_ref).abs().max() <= 1e-5


@pytest.mark.parametrize("position", [0, 3])
def test_runner_takes_the_mask_from_the_frame_after_the_positions(position):
    y_t, condition = torch.randn(2, 1, 6, 8, 4), torch.randn(2, 1, 6, 8, 4)
    mask = (torch.rand(2, 1, 6, 8, 4) > 0.5).float()
    frame = expert_frame(position_channels((6, 8, 4)), mask)
    assert frame.shape == (2, 4, 6, 8, 4) and torch.equal(frame[:, 3:], mask)
    expert = StandInExpert(1 + 1 + position + 1).eval()
    runner = ExpertRunner.from_network(expert, {"position_channels": position, "mask_channels": 1}, 1, 5)
    eps, _ = runner(y_t, condition, 3, positions=frame)
    reference_frame = frame if position else mask
    with torch.no_grad():
        eps_ref, _ = loop_reference(expert, y_t, condition, torch.tensor([3, 3]), 1, 0, positions=reference_frame)
    assert (eps - eps_ref).abs().max() <= 1e-5
    # the coordinates can be made from a volume's shape; the mask cannot
    with pytest.raises(ValueError, match="non-zero mask channel"):
        runner(y_t, condition, 3)
    with pytest.raises(ValueError, match="non-zero mask channel"):
        runner(y_t, condition, 3, positions=position_channels((6, 8, 4)))


def test_runner_from_network_and_grad():
    expert = StandInExpert(1 + 3 + 3)
    runner = ExpertRunner.from_network(expert, {"context_slices": 1, "position_channels": 3}, 2, 4, grad=True)
    assert (runner.context_slices, runner.position_channels) == (1, 3)
    eps, _ = runner(torch.randn(1, 1, 4, 4, 3), torch.randn(1, 1, 4, 4, 3), 1)
    eps.sum().backward()
    assert expert.inp.weight.grad is not None
    with pytest.raises(ValueError):
        ExpertRunner(expert, 3, 4)
    with pytest.raises(ValueError):
        ExpertRunner(expert, 2, 0)


@pytest.fixture(scope="module")
def tiny_expert_network():
    """The tiny preset's axial expert network dict (task sr): 2.5D with the planned context and positions."""
    from tiny_plans import tiny_plans

    from diffens_auto.planning import network_for_task
    network = network_for_task(tiny_plans(), "2d_axial", "sr")
    assert network["context_slices"] > 0 and network["position_channels"] == 3
    return network


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_real_expert_slice_batches_equal_per_slice_loop(tiny_expert_network, slice_axis):
    from diffens_auto.networks import build_expert
    torch.manual_seed(0)
    expert = build_expert(tiny_expert_network).eval()
    y_t, condition = torch.randn(2, 1, 8, 12, 4), torch.randn(2, 1, 8, 12, 4)
    t = torch.tensor([3, 640])
    # the planned expert inputs: context slices and position channels as the tiny preset plans them
    context = tiny_expert_network["context_slices"]
    positions = position_channels(y_t.shape[2:]) if tiny_expert_network["position_channels"] else None
    with torch.no_grad():
        eps_ref, features_ref = loop_reference(expert, y_t, condition, t, slice_axis, context, positions)
    for batch_size in (3, 64):
        eps, features = ExpertRunner.from_network(expert, tiny_expert_network, slice_axis, batch_size)(
            y_t, condition, t, want_features=True)
        assert (eps - eps_ref).abs().max() <= 1e-5
        assert len(features) == len(tiny_expert_network["channels"])
        for f, f_ref in zip(features, features_ref):
            assert f.shape == f_ref.shape and (f - f_ref).abs().max() <= 1e-5


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_no_condition_channel_stacks_to_none_and_the_expert_sees_y_t_and_positions(axis):
    condition = torch.zeros(2, 0, 4, 5, 6)
    assert context_stack(condition, axis, 2).shape == (2, 0, 4, 5, 6)
    seen = []

    def expert(x, t):
        seen.append(x.shape[1])
        return x[:, :1] * 2, []

    y_t = torch.randn(2, 1, 4, 5, 6)
    runner = ExpertRunner(expert, axis, 3, context_slices=2, position_channels=3)
    eps, _ = runner(y_t, condition, 7)
    assert set(seen) == {1 + 3} and torch.equal(eps, 2 * y_t)
