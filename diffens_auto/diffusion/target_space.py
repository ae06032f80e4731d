"""An expert trained in another task's diffusion space, run inside an ensembler's (fusing sr and mt experts for both).

An ensembler samples e, the quantity of its own task: the scaled SR residual e = s (x - u) or the target e = x,
where x is the target in the ensembler task's normalisation and u = up(A x) its degraded condition channel. An
expert of another task with the same target was trained on e' = s' (x' - u') or e' = x', where x' = k x + b is the
same target in the expert task's normalisation (k, b: one pair per case, from the two normalisations' parameters)
and u' = k u + b (upsampling keeps constants). So e' = alpha e + beta, alpha a number per case, beta a volume, and
the ensembler's y_t = sqrt(a_t) e + sqrt(1 - a_t) eps gives

    alpha y_t / sqrt(a_t) + beta = e' + sigma' eps,      sigma' = alpha sqrt((1 - a_t) / a_t),

which is the expert's own y_t' / sqrt(a_t') at the step t' whose noise-to-signal ratio is sigma', with the SAME
eps. The expert runs at the training step t' nearest to that ratio (in log signal-to-noise), on
sqrt(a_t') (alpha y_t / sqrt(a_t) + beta); its noise estimate, divided by the discrete step's small ratio mismatch
sqrt(a_t') sigma' / sqrt(1 - a_t'), estimates the ensembler's eps, and comes back as the ensembler's prediction
quantity (eps or v) at t. For an expert that returns its true noise this is exact (tests/diffusion/
test_target_space.py). Pure tensor code: the spaces are numbers; the per-case normalisation comes with
`set_case`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .prediction import check_prediction
from .schedule import NoiseSchedule
from .slicing import timesteps_for


@dataclass(frozen=True)
class TargetSpace:
    """What a task's networks see of its target: the scaled residual or the target itself, and eps or v."""

    residual_scale: float | None       # s of e = s (x - u); None: e = x (no residual)
    prediction: str                    # "epsilon" or "v"

    def __post_init__(self):
        check_prediction(self.prediction)
        if self.residual_scale is not None and not self.residual_scale > 0:
            raise ValueError(f"residual_scale must be > 0, got {self.residual_scale}.")


@dataclass(frozen=True)
class SpaceConversion:
    """From an ensembler's space to an expert's; the expert's target normalisation is fixed (`expert_params`,
    {"center", "half_range"}) or the same as the ensembler's (None: k = 1, b = 0)."""

    ensembler: TargetSpace
    expert: TargetSpace
    expert_params: dict | None
    degraded_index: int | None         # the channel u among the ensembler's conditions (needed with a residual)

    def __post_init__(self):
        if (self.ensembler.residual_scale is not None or self.expert.residual_scale is not None) \
                and self.degraded_index is None:
            raise ValueError("A residual space needs the degraded target channel (degraded_index).")


class ConvertedRunner:
    """An ExpertRunner of another task's space behind the ensembler's interface (module docstring)."""

    def __init__(self, runner, conversion: SpaceConversion, schedule: NoiseSchedule):
        self.runner, self.conversion, self.schedule = runner, conversion, schedule
        self._case_params = None
        log_snr = torch.log(schedule.alpha_bar) - torch.log1p(-schedule.alpha_bar)
        self._log_snr = log_snr            # decreasing in t

    def __getattr__(self, name):
        # name, slice_axis, position_channels, expert ...: what the strategies read off a runner
        runner = self.__dict__.get("runner")
        if runner is None:
            raise AttributeError(name)
        return getattr(runner, name)

    def set_case(self, target_params) -> None:
        """The ensembler task's target normalisation of the case(s) sampled next: (B, 2) [center, half_range]."""
        # on the CPU with the schedule: a handful of numbers per case
        self._case_params = None if target_params is None else \
            torch.as_tensor(target_params).detach().to("cpu", torch.float64)

    def _affine(self, batch: int):
        """(k, b) per batch element: the expert's normalisation x' = k x + b of the ensembler's x."""
        if self.conversion.expert_params is None:
            return torch.ones(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
        if self._case_params is None:
            raise RuntimeError(f"Expert {self.runner.name}: the case's target normalisation was not set "
                               "(ConvertedRunner.set_case) before running it in another task's space.")
        params = self._case_params.reshape(-1, 2)
        if params.shape[0] not in (1, batch):
            raise ValueError(f"set_case got {params.shape[0]} cases for a batch of {batch}.")
        params = params.expand(batch, 2)
        center, half_range = float(self.conversion.expert_params["center"]), float(
            self.conversion.expert_params["half_range"])
        return params[:, 1] / half_range, (params[:, 0] - center) / half_range

    def expert_input(self, y_t: torch.Tensor, condition: torch.Tensor, t):
        """(y_t' in the expert's space, t' (B,), r (B,)): the expert's noisy input, its step, the noise rescale."""
        batch, view = y_t.shape[0], (-1,) + (1,) * (y_t.ndim - 1)
        t = timesteps_for(t, batch, y_t.device).cpu()
        a = self.schedule.alpha_bar[t]
        k, b = self._affine(batch)
        ens, exp = self.conversion.ensembler, self.conversion.expert
        u = None if self.conversion.degraded_index is None else \
            condition[:, self.conversion.degraded_index:self.conversion.degraded_index + 1]
        # x = a1 e + a0 in the ensembler's normalisation, then e' = alpha e + beta in the expert's
        a1 = 1.0 / ens.residual_scale if ens.residual_scale is not None else 1.0
        dtype = y_t.dtype

        def vol(x):
            return x.to(device=y_t.device, dtype=dtype).reshape(view)
        if exp.residual_scale is not None:
            alpha = exp.residual_scale * k * a1
            beta = vol(exp.residual_scale * k) * (-u) if ens.residual_scale is None else None
        else:
            alpha = k * a1
            beta = vol(b) + (vol(k) * u if ens.residual_scale is not None else 0.0)
        sigma = alpha * torch.sqrt((1 - a) / a)
        target_log_snr = -2 * torch.log(sigma)
        t_prime = (self._log_snr[None, :] - target_log_snr[:, None]).abs().argmin(dim=1)
        a_prime = self.schedule.alpha_bar[t_prime]
        ratio = torch.sqrt(a_prime) * sigma / torch.sqrt(1 - a_prime)
        z = vol(alpha / torch.sqrt(a)) * y_t
        if beta is not None:
            z = z + beta
        return vol(torch.sqrt(a_prime)) * z, t_prime.to(y_t.device), ratio

    def __call__(self, y_t: torch.Tensor, condition: torch.Tensor, t, want_features: bool = False,
                 positions: torch.Tensor | None = None):
        """The ensembler's prediction quantity (eps or v, (B, 1, X, Y, Z)) from the expert, and its features."""
        y_prime, t_prime, ratio = self.expert_input(y_t, condition, t)
        output, features = self.runner(y_prime, condition, t_prime, want_features=want_features, positions=positions)
        view = (-1,) + (1,) * (y_t.ndim - 1)
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()     # the rescale can be large near t = 0: not in an autocast's half dtype
        if self.conversion.expert.prediction == "v":
            output = self.schedule.eps_from_v(y_prime.to(output.dtype), output, t_prime)
        eps = (output / ratio.to(device=y_t.device, dtype=output.dtype).reshape(view)).to(y_t.dtype)
        if self.conversion.ensembler.prediction == "v":
            t = timesteps_for(t, y_t.shape[0], y_t.device)
            # v = sqrt(a) eps - sqrt(1 - a) x0 with x0 = (y_t - sqrt(1 - a) eps) / sqrt(a)
            x0 = self.schedule.tweedie_x0(y_t, eps, t)
            return self.schedule.v_from_noise(x0, eps, t), features
        return eps, features


def set_case_params(runners, target_params) -> None:
    """Give every runner that converts between spaces the normalisation of the case(s) it runs on next."""
    for runner in runners:
        if isinstance(runner, ConvertedRunner):
            runner.set_case(target_params)
