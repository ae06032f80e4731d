"""Ensembling strategies: single, TPDM (alternation per timestep and reset), average (weights), learned (an
untrained ensembler is the average), sliding windows around any strategy, the factory, and sampling end to end
on a tiny plan."""
import pytest
import torch
from tiny_plans import RECON_TASK, TASK, tiny_models, tiny_plans, tiny_recon_plans
from torch import nn

from diffens_auto.diffusion import sample, sampler_from_plans
from diffens_auto.diffusion.slicing import ExpertRunner, position_channels
from diffens_auto.diffusion.sliding_window import sliding_window
from diffens_auto.diffusion.strategies import TPDM, Average, Learned, SingleExpert, Windowed, build_strategy
from diffens_auto.networks import build_expert
from diffens_auto.planning import network_for_task

# ------------------------------------------------------------------ stand-ins and a tiny plan


class RecordingRunner:
    """A runner that returns a constant eps volume and logs its calls."""

    position_channels = 0
    name = None

    def __init__(self, value, log):
        self.value, self.log = value, log

    def __call__(self, y_t, condition, t, want_features=False, positions=None):
        self.log.append(self.value)
        return torch.full_like(y_t, float(self.value)), None


class PointwiseExpert(nn.Module):
    """A 2D expert whose output at a pixel depends on that pixel's input channels only (positions included)."""

    def __init__(self, in_channels, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Conv2d(in_channels, 4, 1), nn.Conv2d(4, 1, 1)

    def forward(self, x, t):
        h = torch.tanh(self.a(x) + 1e-3 * t.float()[:, None, None, None])
        return self.b(h), [h]


class PointwiseEnsembler(nn.Module):
    """An ensembler without features whose output at a voxel depends on that voxel's inputs only."""

    experts = ["2d_axial", "2d_sagittal"]
    feature_injection = []

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv3d(4, 1, 1)

    def forward(self, condition, y_t, expert_eps, t, expert_features=None):
        assert expert_features is None
        return self.conv(torch.cat([condition, y_t, *expert_eps], dim=1)) + 0.5 * sum(expert_eps)


@pytest.fixture(scope="module")
def tiny():
    """A tiny plan on 16^3 volumes (task sr, 2x average pooling) with its experts and both ensemblers."""
    plans = tiny_plans()
    experts, ensemblers = tiny_models(plans)
    return plans, experts, ensemblers


def runners_of(tiny, names=("2d_axial", "2d_sagittal"), slice_batch_size=6):
    """Runners of the tiny plan's experts, keyed by configuration name."""
    plans, experts, _ = tiny
    return {name: ExpertRunner.from_network(experts[name], plans["configurations"][name]["network"],
                                            plans["configurations"][name]["slice_axis"], slice_batch_size, name=name)
            for name in names}


def volumes(batch=1, shape=(16, 16, 16), conditions=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *shape, generator=generator), torch.randn(batch, conditions, *shape,
                                                                           generator=generator)


# ------------------------------------------------------------------ single, average, TPDM


def test_single_expert_equals_its_runner(tiny):
    runner = runners_of(tiny, ["2d_coronal"])["2d_coronal"]
    y_t, condition = volumes(batch=2)
    strategy = SingleExpert(runner)
    assert torch.equal(strategy(y_t, condition, 500), runner(y_t, condition, 500)[0])
    strategy.reset()


def test_average_of_identical_experts_is_that_expert(tiny):
    runner = runners_of(tiny, ["2d_axial"])["2d_axial"]
    y_t, condition = volumes()
    eps = runner(y_t, condition, 10)[0]
    assert torch.equal(Average([runner, runner])(y_t, condition, 10), eps)
    assert (Average([runner] * 3)(y_t, condition, 10) - eps).abs().max() <= 1e-6


def test_average_respects_weights(tiny):
    runners = runners_of(tiny, ["2d_axial", "2d_coronal", "2d_sagittal"])
    y_t, condition = volumes()
    eps = {name: r(y_t, condition, 250)[0] for name, r in runners.items()}
    weighted = Average(runners, weights=[3, 1, 0])(y_t, condition, 250)
    assert (weighted - (0.75 * eps["2d_axial"] + 0.25 * eps["2d_coronal"])).abs().max() <= 1e-6
    tosm = Average(runners)(y_t, condition, 250)   # TOSM: the three planes, equal weights
    assert (tosm - sum(eps.values()) / 3).abs().max() <= 1e-6
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0]):
        with pytest.raises(ValueError):
            Average(runners, weights=bad)


def test_average_of_2p5d_experts_with_positions_runs(tiny):
    plans, _, _ = tiny
    runners = []
    for name in ("2d_axial", "2d_coronal", "2d_sagittal"):   # MADM: 2.5D experts on three planes
        network = {**network_for_task(plans, name, TASK), "context_slices": 2, "position_channels": 3}
        network["in_channels"] = 1 + 1 * 5 + 3
        runners.append(ExpertRunner.from_network(build_expert(network).eval(), network,
                                                 plans["configurations"][name]["slice_axis"], 16))
    y_t, condition = volumes()
    eps = Average(runners)(y_t, condition, 999)
    assert eps.shape == y_t.shape and torch.isfinite(eps).all()


def test_tpdm_alternates_from_step_to_step_and_resets():
    log = []
    y_t, condition = volumes(shape=(2, 2, 2))
    tpdm = TPDM([RecordingRunner(0, log), RecordingRunner(1, log)])
    outputs = [float(tpdm(y_t, condition, t)[0, 0, 0, 0, 0]) for t in (900, 800, 700, 600, 500)]
    assert log == [0, 1, 0, 1, 0] and outputs == [0, 1, 0, 1, 0] and tpdm.history == log
    tpdm.reset()
    tpdm(y_t, condition, 900)
    assert tpdm.history == [0] and log[-1] == 0

    log.clear()
    every_third = TPDM([RecordingRunner(0, log), RecordingRunner(1, log)], period=3)   # TPDM's K = 3
    for t in range(6, 0, -1):
        every_third(y_t, condition, t)
    assert log == [0, 0, 1, 0, 0, 1]

    log.clear()
    three = TPDM([RecordingRunner(i, log) for i in range(3)])
    for t in (40, 30, 20, 10):
        three(y_t, condition, t)
    assert log == [0, 1, 2, 0]
    with pytest.raises(ValueError):
        TPDM([RecordingRunner(0, log)])
    with pytest.raises(ValueError):
        TPDM([RecordingRunner(i, log) for i in range(3)], period=2)


def test_tpdm_switches_on_a_new_timestep_not_on_every_call():
    """Calls within one step (sliding windows, test-time adaptation) all go to that step's expert."""
    log = []
    y_t, condition = volumes(shape=(2, 2, 2))
    tpdm = TPDM([RecordingRunner(0, log), RecordingRunner(1, log)])
    for t in (900, 900, 800, 800, 800, 700):
        tpdm(y_t, condition, t)
    assert log == [0, 0, 1, 1, 1, 0] and tpdm.history == [0, 1, 0]
    log.clear()
    tpdm.reset()
    tpdm(y_t, condition, torch.tensor([700, 700]))        # a (B,) tensor t counts as the same step as its value
    tpdm(y_t, condition, torch.tensor([700, 700]))
    tpdm(y_t, condition, 600)
    assert log == [0, 0, 1]


# ------------------------------------------------------------------ learned


@pytest.mark.parametrize("ensembler_name, uses_features", [("3d_ensembler", True), ("3d_ensembler_small", False)])
def test_untrained_ensembler_equals_average(tiny, ensembler_name, uses_features):
    _, _, ensemblers = tiny
    ensembler = ensemblers[ensembler_name]
    runners = runners_of(tiny)
    seen = {}
    forward = ensembler.forward

    def spy(condition, y_t, expert_eps, t, expert_features=None):
        seen["features"], seen["t"] = expert_features, t
        return forward(condition, y_t, expert_eps, t, expert_features)

    ensembler.forward = spy
    try:
        learned = Learned(ensembler, runners)
        y_t, condition = volumes(batch=2)
        eps = learned(y_t, condition, 321)
    finally:
        del ensembler.forward
    average = Average([runners["2d_axial"], runners["2d_sagittal"]])(y_t, condition, 321)
    assert learned.want_features is uses_features
    assert (eps - average).abs().max() <= 1e-6
    assert torch.equal(seen["t"], torch.tensor([321, 321]))
    if uses_features:
        axial = seen["features"]["2d_axial"]
        assert [tuple(f.shape) for f in axial] == [(2, 8, 16, 16, 16), (2, 16, 8, 8, 16), (2, 32, 4, 4, 16)]
        assert tuple(seen["features"]["2d_sagittal"][2].shape) == (2, 32, 16, 4, 4)
    else:
        assert seen["features"] is None


def test_learned_with_a_window_covering_the_volume_equals_no_window(tiny):
    _, _, ensemblers = tiny
    runners = runners_of(tiny)
    y_t, condition = volumes()
    plain = Learned(ensemblers["3d_ensembler"], runners)(y_t, condition, 40)
    windowed = Windowed(Learned(ensemblers["3d_ensembler"], runners), (16, 16, 16))(y_t, condition, 40)
    assert (windowed - plain).abs().max() <= 1e-6


def test_learned_patch_wise_runs_experts_and_ensembler_per_window(tiny):
    _, _, ensemblers = tiny
    runners = runners_of(tiny)
    y_t, condition = volumes(shape=(16, 16, 24))
    learned = build_strategy("3d_ensembler", runners, ensemblers["3d_ensembler"], window=(8, 16, 16), overlap=0.5,
                             sigma_scale=0.125)
    eps = learned(y_t, condition, 77)
    # an untrained ensembler averages, so per window it is the average of the experts on that window's slices,
    # each seeing its window's cut of the whole volume's coordinates
    average = Average(list(runners.values()))
    positions = position_channels(y_t.shape[2:])
    expected = sliding_window(lambda y, c, p: average(y, c, 77, positions=p), [y_t, condition, positions],
                              (8, 16, 16), 0.5, 0.125)
    assert eps.shape == y_t.shape
    assert (eps - expected).abs().max() <= 1e-6


def pointwise_runners(slice_batch_size=5):
    """Two pointwise experts with position channels: the output at a voxel depends on that voxel's inputs only."""
    return {name: ExpertRunner(PointwiseExpert(1 + 1 + 3, seed), axis, slice_batch_size, position_channels=3,
                               name=name)
            for name, axis, seed in (("2d_axial", 2, 1), ("2d_sagittal", 0, 2))}


@pytest.mark.parametrize("name", ["2d_axial", "2d_sagittal", "tpdm", "average", "learned"])
def test_windows_use_global_positions_for_every_strategy(name):
    """Pointwise experts (with position channels): windows must reproduce the full pass, whatever the strategy."""
    runners = pointwise_runners()
    y_t, condition = volumes(shape=(13, 16, 10))
    full = build_strategy(name, runners, PointwiseEnsembler())
    windowed = build_strategy(name, runners, PointwiseEnsembler(), window=(8, 6, 8), overlap=0.5)
    assert isinstance(windowed, Windowed) and windowed.window == (8, 6, 8) and windowed.uses_positions
    with torch.no_grad():
        for t in (5, 4):                         # two steps: TPDM's second turn as well
            reference = full(y_t, condition, t)
            assert (windowed(y_t, condition, t) - reference).abs().max() <= 1e-5, t
    # the same windows with window-local coordinates are wrong: the check above can fail
    local = [r(y, c, 5)[0] for r in runners.values() for y, c in [(y_t[..., :8, :6, :8], condition[..., :8, :6, :8])]]
    cut = [r(y_t, condition, 5)[0][..., :8, :6, :8] for r in runners.values()]
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(local, cut))


def test_windowed_resets_the_wrapped_strategy():
    log = []
    tpdm = TPDM([RecordingRunner(0, log), RecordingRunner(1, log)])
    windowed = Windowed(tpdm, (2, 2, 2), overlap=0.5)
    y_t, condition = volumes(shape=(4, 4, 4))
    windowed(y_t, condition, 9)
    assert set(log) == {0} and len(log) == 27             # 3 x 3 x 3 windows, all in TPDM's first step
    windowed(y_t, condition, 8)
    assert set(log[27:]) == {1}
    windowed.reset()
    assert tpdm.history == [] and windowed.runners == tpdm.runners and not windowed.uses_positions


def test_learned_matches_runners_to_the_ensemblers_experts(tiny):
    _, _, ensemblers = tiny
    runners = runners_of(tiny)
    reordered = Learned(ensemblers["3d_ensembler"], {"2d_sagittal": runners["2d_sagittal"],
                                                     "2d_axial": runners["2d_axial"]})
    assert reordered.names == ["2d_axial", "2d_sagittal"]
    assert reordered.runners == [runners["2d_axial"], runners["2d_sagittal"]]
    with pytest.raises(ValueError, match="2d_sagittal"):
        Learned(ensemblers["3d_ensembler"], {"2d_axial": runners["2d_axial"]})
    with pytest.raises(ValueError):
        Learned(ensemblers["3d_ensembler"], [runners["2d_axial"]])


# ------------------------------------------------------------------ factory and sampling


def test_build_strategy_by_name(tiny):
    _, _, ensemblers = tiny
    runners = runners_of(tiny)
    assert isinstance(build_strategy("2d_axial", runners), SingleExpert)
    assert build_strategy("2d_sagittal", runners).runner is runners["2d_sagittal"]
    assert isinstance(build_strategy("single", {"2d_axial": runners["2d_axial"]}), SingleExpert)
    assert isinstance(build_strategy("tpdm", runners), TPDM)
    assert build_strategy("tpdm", runners, tpdm_period=4).period == 4
    assert build_strategy("average", runners, weights=[2, 1]).weights == pytest.approx([2 / 3, 1 / 3])
    learned = build_strategy("3d_ensembler", runners, ensemblers["3d_ensembler"], window=(8, 8, 8))
    assert isinstance(learned, Windowed) and learned.window == (8, 8, 8) and isinstance(learned.strategy, Learned)
    assert isinstance(build_strategy("tpdm", runners, window=(8, 8, 8), overlap=0.25).strategy, TPDM)
    assert isinstance(build_strategy("learned", runners, ensemblers["3d_ensembler_small"]), Learned)
    with pytest.raises(ValueError, match="Unknown strategy"):
        build_strategy("median", runners)
    with pytest.raises(ValueError, match="exactly one"):
        build_strategy("single", runners)
    with pytest.raises(ValueError, match="2d_coronal"):
        build_strategy("2d_coronal", runners)
    with pytest.raises(ValueError, match="ensembler"):
        build_strategy("learned", runners)


@pytest.mark.parametrize("name", ["2d_axial", "tpdm", "average", "3d_ensembler", "3d_ensembler_small"])
def test_sampling_with_each_strategy_is_deterministic(tiny, name):
    plans, _, ensemblers = tiny
    runners = runners_of(tiny, slice_batch_size=16)
    strategy = build_strategy(name, runners, ensemblers.get(name))
    sampler = sampler_from_plans(plans["diffusion"], num_steps=3)
    _, condition = volumes()
    results = []
    for _ in range(2):  # sample() resets the strategy, so TPDM starts every run with its first expert
        results.append(sample(strategy, sampler, (1, 1, 16, 16, 16), condition, seed=7))
    assert results[0].shape == (1, 1, 16, 16, 16) and torch.isfinite(results[0]).all()
    assert torch.equal(results[0], results[1])
    if name == "tpdm":
        assert strategy.history == [0, 1, 0]


# ------------------------------------------------------------------ unconditional experts (a recon task's priors)


@pytest.fixture(scope="module")
def recon():
    """A tiny plan of a kspace task: experts with no condition channel, ensemblers with n_cond = 0."""
    plans = tiny_recon_plans()
    experts, ensemblers = tiny_models(plans, task=RECON_TASK)
    return plans, experts, ensemblers


def test_unconditional_experts_see_only_y_t_and_positions(recon):
    plans, experts, ensemblers = recon
    assert plans["tasks"][RECON_TASK]["condition_channels"] == []
    for name in ("2d_axial", "2d_coronal", "2d_sagittal"):
        assert network_for_task(plans, name, RECON_TASK)["in_channels"] == 1 + 0 + 3
        assert experts[name].in_channels == 4
    assert ensemblers["3d_ensembler"].unet.in_channels == 0 + 1 + 2


@pytest.mark.parametrize("name", ["2d_axial", "single", "tpdm", "average", "3d_ensembler", "3d_ensembler_small"])
def test_every_strategy_runs_over_unconditional_experts(recon, name):
    _, _, ensemblers = recon
    runners = runners_of(recon, slice_batch_size=5)
    if name == "single":
        runners = {"2d_axial": runners["2d_axial"]}
    strategy = build_strategy(name, runners, ensemblers.get(name))
    y_t, condition = volumes(batch=2, conditions=0)
    assert condition.shape == (2, 0, 16, 16, 16)
    with torch.no_grad():
        eps = strategy(y_t, condition, 500)
        windowed = build_strategy(name, runners, ensemblers.get(name), window=(8, 16, 16))(y_t, condition, 500)
    assert eps.shape == y_t.shape and torch.isfinite(eps).all() and windowed.shape == y_t.shape
    if name in ("2d_axial", "single"):
        # a slice batch spanning two batch elements gives what each slice alone gives
        runner = runners["2d_axial"]
        one_by_one = ExpertRunner.from_network(runner.expert, recon[0]["configurations"]["2d_axial"]["network"], 2,
                                               1)(y_t, condition, 500)[0]
        assert (eps - one_by_one).abs().max() <= 1e-5


def test_an_untrained_ensembler_of_unconditional_experts_is_their_average(recon):
    _, _, ensemblers = recon
    runners = runners_of(recon)
    y_t, condition = volumes(conditions=0)
    with torch.no_grad():
        learned = Learned(ensemblers["3d_ensembler"], runners)(y_t, condition, 250)
        average = Average(list(runners.values()))(y_t, condition, 250)
    assert (learned - average).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["tpdm", "average", "3d_ensembler"])
def test_sampling_an_unconditional_prior_is_deterministic(recon, name):
    plans, _, ensemblers = recon
    strategy = build_strategy(name, runners_of(recon, slice_batch_size=16), ensemblers.get(name))
    sampler = sampler_from_plans(plans["diffusion"], num_steps=2)
    condition = torch.zeros(1, 0, 16, 16, 16)
    first, second = (sample(strategy, sampler, (1, 1, 16, 16, 16), condition, seed=3) for _ in range(2))
    assert torch.isfinite(first).all() and torch.equal(first, second)
