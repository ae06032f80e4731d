"""Per-timestep errors of a denoiser on a known sample: where along t an expert or an ensembler fails.

For a clean y0 (with its condition), a timestep t and noise eps: y_t = sqrt(alpha_bar_t) y0 + sqrt(1 - alpha_bar_t)
eps (DDPM Eq. 4); the denoiser's eps_hat gives Tweedie's x0_hat = (y_t - sqrt(1 - alpha_bar_t) eps_hat) /
sqrt(alpha_bar_t). Reported per t: the eps MSE and the x0 error in the target's space (`to_target` maps a y0-space
volume to the image the task predicts, e.g. y0 / s + up(A target) for an SR residual of scale s). The trivial
predictor x0_hat = 0 (for a residual: the interpolated input, i.e. the floor) implies eps_hat = y_t / sqrt(1 - alpha_bar_t);
its errors are the reference every curve is read against.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .schedule import NoiseSchedule


def bucket_timesteps(num_train_steps: int, num_buckets: int) -> list[int]:
    """The middle timestep of each of `num_buckets` equal buckets of [0, num_train_steps)."""
    edges = torch.linspace(0, num_train_steps, num_buckets + 1).tolist()
    return [min(int((lo + hi) / 2), num_train_steps - 1) for lo, hi in zip(edges[:-1], edges[1:])]


@torch.no_grad()
def timestep_errors(denoiser: Callable, schedule: NoiseSchedule, y0: Tensor, condition, *,
                    timesteps: Sequence[int], noise: Tensor, to_target: Callable[[Tensor], Tensor] | None = None,
                    region: tuple | None = None) -> dict:
    """{"eps_mse", "x0_mse", "trivial_eps_mse", "trivial_x0_mse"}: one value per timestep, the same noise at each.

    `region` (a tuple of slices of y0) restricts the means to the voxels that hold the case (not its padding).
    """
    to_target = to_target or (lambda volume: volume)
    region = region or (slice(None),) * y0.ndim
    target = to_target(y0)[region]
    trivial_target = to_target(torch.zeros_like(y0))[region]
    rows = {"eps_mse": [], "x0_mse": [], "trivial_eps_mse": [], "trivial_x0_mse": []}
    for t in timesteps:
        alpha_bar = schedule.alpha_bar[int(t)].to(y0.dtype)
        y_t = alpha_bar.sqrt() * y0 + (1 - alpha_bar).sqrt() * noise
        if hasattr(denoiser, "reset"):            # stateful strategies (TPDM) start from their first turn
            denoiser.reset()
        eps_hat = denoiser(y_t, condition, int(t)).to(y0.dtype)
        x0_hat = (y_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()
        trivial_eps = y_t / (1 - alpha_bar).sqrt()
        rows["eps_mse"].append(float(((eps_hat - noise)[region] ** 2).mean()))
        rows["x0_mse"].append(float(((to_target(x0_hat)[region] - target) ** 2).mean()))
        rows["trivial_eps_mse"].append(float(((trivial_eps - noise)[region] ** 2).mean()))
        rows["trivial_x0_mse"].append(float(((trivial_target - target) ** 2).mean()))
    return rows
