"""The adapting denoiser: it lowers its loss, adapts only inside the horizon, keeps the graph to K slices, and its
memory does not grow with the number of slices beyond the volume buffers."""
import pytest
import torch

from diffens_auto.adaptation import AdaptationDivergedError, AdaptationSettings, AdaptingDenoiser, KSpaceSlices
from diffens_auto.benchmarking import PeakMemoryTracker
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.slicing import position_channels
from diffens_auto.diffusion.strategies import SingleExpert
from diffens_auto.operators import FileOrderKSpace

IDENTITY = {"permutation": [0, 1, 2], "flips": [False, False, False]}
PLANE = (16, 16)
# what is alive through an adaptation phase besides the networks, in float32 volumes: y_t, the experts' 3 position
# channels, the measurement (complex64: 2) and the per-slice mask
VOLUME_BUFFERS = 1 + 3 + 2 + 1


def _case(num_slices: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (*PLANE, num_slices)
    mask = (torch.rand(shape, generator=generator) > 0.6).float()
    operator = FileOrderKSpace(IDENTITY, mask, [0, 1])          # each axial slice on its own
    x_true = torch.rand((1, 1, *shape), generator=generator)
    y = operator.A(x_true)
    y_t = torch.randn((1, 1, *shape), generator=generator)
    return operator, y, y_t


def _adapter(runner, num_slices, *, method="d3ip", timesteps=(500,), **values):
    operator, y, y_t = _case(num_slices)
    settings = AdaptationSettings(method=method, **{"slices": 2, "steps": 1, "lr": 1e-3, **values})
    problem = KSpaceSlices(operator, y, [(0, 0)] * 3, slice_axis=2)
    frame = position_channels(y_t.shape[2:])
    adapter = AdaptingDenoiser(SingleExpert(runner), [runner], problem, settings, schedule=NoiseSchedule.linear(),
                               timesteps=timesteps, frame=frame)
    return adapter, y_t, frame, operator, y


def test_repeated_steps_lower_the_measurement_loss(recon_plans, make_runner):
    runner = make_runner(recon_plans)
    adapter, y_t, *_ = _adapter(runner, 8, steps=30, lr=3e-3)
    condition = y_t.new_zeros((1, 0, *y_t.shape[2:]))
    adapter.begin(0)
    adapter(y_t, condition, 500)
    weights = adapter.end()
    first, last = sum(adapter.losses[:5]) / 5, sum(adapter.losses[-5:]) / 5
    assert last < 0.9 * first, adapter.losses
    assert weights["2d_axial"] and not any(".base." in n for n, _ in runner.expert.named_parameters())


def test_outside_the_horizon_nothing_adapts_and_the_output_is_the_priors(recon_plans, make_runner):
    runner = make_runner(recon_plans)
    adapter, y_t, frame, *_ = _adapter(runner, 6, timesteps=(990, 500, 10))
    condition = y_t.new_zeros((1, 0, *y_t.shape[2:]))
    with torch.no_grad():
        prior = runner(y_t, condition, 990, positions=frame)[0]
        adapter.begin(0)
        eps = adapter(y_t, condition, 990)
    assert adapter.losses == [] and torch.equal(eps, prior)
    with torch.no_grad():
        adapter(y_t, condition, 500)
    assert len(adapter.losses) == 1
    adapter.end()
    with pytest.raises(RuntimeError, match="begin"):
        adapter(y_t, condition, 500)


def test_a_non_finite_loss_stops_the_case_with_the_fix(recon_plans, make_runner):
    runner = make_runner(recon_plans)
    adapter, y_t, *_ = _adapter(runner, 6)
    adapter.problems[2].measurement = adapter.problems[2].measurement * float("nan")
    adapter.begin(0)
    with pytest.raises(AdaptationDivergedError, match="diverged at t = 500.*--adapt_lr"):
        adapter(y_t, y_t.new_zeros((1, 0, *y_t.shape[2:])), 500)
    adapter.end()


def _saved_shapes(runner, num_slices, method="d3ip"):
    adapter, y_t, *_ = _adapter(runner, num_slices, method=method, slices=3)
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor
    adapter.begin(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), torch.no_grad():
        adapter(y_t, y_t.new_zeros((1, 0, *y_t.shape[2:])), 500)
    adapter.end()
    return shapes


@pytest.mark.parametrize("method", ["d3ip", "d3ip_mbir"])
def test_no_tensor_saved_for_backward_spans_more_than_the_drawn_slices(recon_plans, make_runner, method):
    runner = make_runner(recon_plans)
    # 37 slices: a size no channel count or plane edge of the tiny networks has
    small, large = _saved_shapes(runner, 12, method), _saved_shapes(runner, 37, method)
    assert small and sorted(small) == sorted(large)      # nothing the graph keeps depends on the volume's size
    assert not any(37 in shape for shape in large)


def test_the_adaptation_phase_peak_is_flat_in_the_number_of_slices(recon_plans, make_runner):
    runner = make_runner(recon_plans)
    rest = {}
    for num_slices in (12, 24, 48):
        adapter, y_t, frame, operator, y = _adapter(runner, num_slices, slices=6, steps=2)
        condition = y_t.new_zeros((1, 0, *y_t.shape[2:]))
        adapter.begin(0)
        tracker = PeakMemoryTracker()
        tracker.track(y_t, frame, y, operator.mask, list(runner.expert.parameters()))
        with tracker, torch.no_grad():
            adapter(y_t, condition, 500)
        adapter.end()
        volume_bytes = VOLUME_BUFFERS * 4 * PLANE[0] * PLANE[1] * num_slices
        rest[num_slices] = tracker.peak_bytes - volume_bytes
        print(f"N = {num_slices}: peak {tracker.peak_bytes / 2**20:.2f} MiB, minus volume buffers "
              f"{rest[num_slices] / 2**20:.2f} MiB")
    assert max(rest.values()) <= 1.10 * min(rest.values()), rest
