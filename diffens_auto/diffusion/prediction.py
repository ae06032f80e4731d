"""What the networks predict: the noise eps (DDPM) or the velocity v (Salimans & Ho 2022), and the map to eps.

    eps: the network's output is eps_hat; its x0 estimate (y_t - sqrt(1 - a) eps_hat) / sqrt(a) multiplies the
         output's error by sqrt((1 - a) / a), about 100 at t = 950 of the linear schedule.
    v:   the output is v_hat, v = sqrt(a) eps - sqrt(1 - a) y0; x0 = sqrt(a) y_t - sqrt(1 - a) v_hat, whose
         error is never larger than the output's, so a network that knows little at large t gives an x0 estimate
         near its mean instead of one blown up by 1 / sqrt(a). eps = sqrt(1 - a) y_t + sqrt(a) v_hat.

Everything downstream of the networks (the ensembling strategies, the samplers, the per-step projection) works
with eps: `as_eps_denoiser` wraps a denoiser whose output is v. The strategies combine their experts' outputs
linearly with weights summing to 1 (average, TPDM's turns, the ensembler's zero-sum maps plus the mean), and the
map v -> eps is affine in v with the same y_t for every expert, so combining v's and converting gives the same eps
as converting each v first; the ensembler's residual map is learned in the experts' own space.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from .schedule import NoiseSchedule

PREDICTIONS = ("epsilon", "v")

Denoiser = Callable[[Tensor, Any, int], Tensor]


def check_prediction(prediction: str) -> str:
    """`prediction` itself, or a ValueError naming the known ones."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"Unknown prediction {prediction!r}; the networks predict one of {list(PREDICTIONS)}.")
    return prediction


def training_target(schedule: NoiseSchedule, prediction: str, y0: Tensor, noise: Tensor, t) -> Tensor:
    """What the network is trained to output for (y0, noise, t): the noise itself, or the velocity."""
    if check_prediction(prediction) == "v":
        return schedule.v_from_noise(y0, noise, t)
    return noise


class EpsDenoiser:
    """A denoiser whose output is the velocity v, seen as an eps denoiser (the samplers' interface)."""

    def __init__(self, denoiser: Denoiser, schedule: NoiseSchedule):
        self.denoiser, self.schedule = denoiser, schedule

    def __call__(self, y_t: Tensor, condition, t: int) -> Tensor:
        return self.schedule.eps_from_v(y_t, self.denoiser(y_t, condition, t), t)

    def reset(self) -> None:
        """Reset the wrapped denoiser's state (TPDM's turn), if it keeps any."""
        reset = getattr(self.denoiser, "reset", None)
        if callable(reset):
            reset()


def as_eps_denoiser(denoiser: Denoiser, schedule: NoiseSchedule, prediction: str) -> Denoiser:
    """`denoiser` itself when it predicts eps, else an EpsDenoiser that converts its v to eps."""
    return EpsDenoiser(denoiser, schedule) if check_prediction(prediction) == "v" else denoiser
