"""Running an expert of another task's space inside an ensembler's: exact for an expert that knows the true noise."""
import pytest
import torch

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.target_space import ConvertedRunner, SpaceConversion, TargetSpace, set_case_params
from diffens_auto.preprocessing.normalization import renormalize

SCHEDULE = NoiseSchedule.linear(1000)
SHAPE = (2, 1, 6, 5, 4)
ENSEMBLER_PARAMS = torch.tensor([[120.0, 300.0], [80.0, 260.0]], dtype=torch.float64)   # per case [center, half_range]
EXPERT_PARAMS = {"center": 150.0, "half_range": 400.0}                                  # the dataset's


class OracleExpert:
    """Returns the exact noise (or velocity) of its input, knowing its own clean quantity e' per case."""

    name, slice_axis, position_channels = "mt:2d_axial", 2, 0

    def __init__(self, clean, prediction):
        self.clean, self.prediction, self.calls = clean, prediction, []

    def __call__(self, y_t, condition, t, want_features=False, positions=None):
        self.calls.append(t.clone())
        eps = SCHEDULE.eps_from_x0(y_t, self.clean, t)
        out = SCHEDULE.v_from_noise(self.clean, eps, t) if self.prediction == "v" else eps
        return out, (["features"] if want_features else None)


def spaces_case(ensembler: TargetSpace, expert: TargetSpace, same_normalization: bool):
    """x, u in the ensembler's normalisation, e and e' of both spaces, the condition holding u at channel 1."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    u = torch.nn.functional.avg_pool3d(x, 3, 1, 1)
    condition = torch.cat([torch.randn(SHAPE, generator=generator, dtype=torch.float64), u], dim=1)
    def in_expert_normalisation(volume):
        # the preprocessing's own map between two normalisations of one channel, case by case
        if same_normalization:
            return volume
        return torch.cat([renormalize(volume[i:i + 1], {"center": float(c), "half_range": float(h)}, EXPERT_PARAMS)
                          for i, (c, h) in enumerate(ENSEMBLER_PARAMS)])
    x_expert, u_expert = in_expert_normalisation(x), in_expert_normalisation(u)

    def quantity(space, x_, u_):
        return space.residual_scale * (x_ - u_) if space.residual_scale is not None else x_
    return condition, quantity(ensembler, x, u), quantity(expert, x_expert, u_expert)


CASES = [
    # the planned fusion: an SR ensembler (scaled residual, v) with an MT expert (target, eps, dataset scale)
    (TargetSpace(4.0, "v"), TargetSpace(None, "epsilon"), False),
    (TargetSpace(4.0, "epsilon"), TargetSpace(None, "v"), False),
    (TargetSpace(4.0, "v"), TargetSpace(2.5, "v"), True),          # residuals of two scales
    (TargetSpace(None, "epsilon"), TargetSpace(3.0, "v"), True),   # a target ensembler with a residual expert
    (TargetSpace(None, "v"), TargetSpace(None, "epsilon"), False),
]


@pytest.mark.parametrize("ensembler, expert, same_normalization", CASES)
@pytest.mark.parametrize("t", [0, 37, 400, 999])
def test_an_oracle_expert_gives_the_ensemblers_true_output(ensembler, expert, same_normalization, t):
    condition, e, e_expert = spaces_case(ensembler, expert, same_normalization)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = torch.tensor([t, max(t - 30, 0)])
    y_t = SCHEDULE.q_sample(e, steps, noise)
    oracle = OracleExpert(e_expert, expert.prediction)
    conversion = SpaceConversion(ensembler, expert, None if same_normalization else EXPERT_PARAMS, degraded_index=1)
    runner = ConvertedRunner(oracle, conversion, SCHEDULE)
    set_case_params([runner], ENSEMBLER_PARAMS)
    output, features = runner(y_t, condition, steps, want_features=True)
    expected = SCHEDULE.v_from_noise(e, noise, steps) if ensembler.prediction == "v" else noise
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-9)
    assert features == ["features"] and oracle.calls[0].dtype == torch.long
    assert runner.name == "mt:2d_axial" and runner.slice_axis == 2     # what strategies read off a runner


def test_the_expert_runs_at_the_step_of_its_own_noise_level():
    ensembler, expert = TargetSpace(4.0, "v"), TargetSpace(None, "epsilon")
    condition, e, e_expert = spaces_case(ensembler, expert, False)
    runner = ConvertedRunner(OracleExpert(e_expert, "epsilon"), SpaceConversion(ensembler, expert, EXPERT_PARAMS, 1),
                             SCHEDULE)
    runner.set_case(ENSEMBLER_PARAMS)
    steps = torch.tensor([300, 300])
    _, t_prime, _ = runner.expert_input(torch.zeros(SHAPE, dtype=torch.float64), condition, steps)
    # the expert sees the target at k / 4 of the residual's noise-to-signal ratio: a LESS noisy step
    a = SCHEDULE.alpha_bar
    k = ENSEMBLER_PARAMS[:, 1] / EXPERT_PARAMS["half_range"]
    ratio = k / 4 * torch.sqrt((1 - a[300]) / a[300])
    assert torch.all(t_prime < 300)
    found = torch.sqrt((1 - a[t_prime]) / a[t_prime])
    for i in range(2):   # the nearest step in log-SNR: its neighbours are no closer
        candidates = torch.sqrt((1 - a[t_prime[i] - 1:t_prime[i] + 2]) / a[t_prime[i] - 1:t_prime[i] + 2])
        assert (torch.log(found[i]) - torch.log(ratio[i])).abs() <= (torch.log(candidates) - torch.log(ratio[i])).abs().min() + 1e-12


def test_a_case_normalisation_is_required_when_the_scales_differ():
    ensembler, expert = TargetSpace(4.0, "v"), TargetSpace(None, "epsilon")
    condition, e, e_expert = spaces_case(ensembler, expert, False)
    runner = ConvertedRunner(OracleExpert(e_expert, "epsilon"), SpaceConversion(ensembler, expert, EXPERT_PARAMS, 1),
                             SCHEDULE)
    with pytest.raises(RuntimeError, match="set_case"):
        runner(torch.zeros(SHAPE, dtype=torch.float64), condition, 10)
    with pytest.raises(ValueError, match="degraded"):
        SpaceConversion(ensembler, expert, EXPERT_PARAMS, None)
