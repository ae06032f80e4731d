"""DDS sampling as D3IP runs it: the slerp start (D3IP Eq. 16) and a few CG steps of data consistency per step.

Pure tensor code on (B, C, X, Y, Z) volumes; the slice axis is a spatial axis as in `slicing.py` (0 = X, 1 = Y,
2 = Z). The operator is any object with `cg_data_consistency(x0_hat, y, gamma, num_steps)` (e.g.
`operators.KSpaceUndersampling`); it is passed in, so this module imports no operator. The prior is real-valued:
`zero_filled` is a real image (the caller picks Re or |A^+ y|). Recon prediction (inference/recon_prediction.py)
runs `dds_sample`.

    start = dds_start(zero_filled, schedule, t', slice_axis=2, generator=g)     # D3IP Eq. 16
    hook = DDSDataConsistency(operator, y, gamma=5.0, cg_steps=5, clip=(lo, hi))  # D3IP Eq. 27-28 after the clip
    x = dds_sample(denoiser, sampler, operator, y, zero_filled, slice_axis=2, seed=0)

`dds_sample` runs `sample()` from that start at the sampler's first timestep t', so t' is the sampler's choice:
980 for 50 "leading" DDIM steps of T = 1000 (DDS's own steps 980, 960, ..., 0), or `start_timestep=980` with
"linspace" spacing (the same steps) or with DDPM's "guided" spacing.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .samplers import RespacedSampler, gaussian_noise
from .sampling import Denoiser, sample
from .schedule import NoiseSchedule

# below this sin(theta) the two draws are (anti)parallel and slerp's weights are 0 / 0: interpolate linearly
_PARALLEL = 1e-8


def slerp(a: Tensor, b: Tensor, tau: Tensor) -> Tensor:
    """Spherical interpolation from a (tau = 0) to b (tau = 1); the angle is taken per batch element (dim 0).

    a and b have the same shape; tau broadcasts against them, so a (1, ..., N, ...) tau with size-1 a and b along
    that axis gives N interpolants. The weights are computed in float64 and applied in a's dtype.
    """
    dims = tuple(range(1, a.ndim))
    a64, b64 = a.double(), b.double()
    norm_a = torch.linalg.vector_norm(a64, dim=dims, keepdim=True)
    norm_b = torch.linalg.vector_norm(b64, dim=dims, keepdim=True)
    cos = (a64 * b64).sum(dims, keepdim=True) / (norm_a * norm_b)
    theta = cos.clamp(-1.0, 1.0).acos()
    tau = tau.to(device=a.device, dtype=torch.float64)
    sin = theta.sin()
    parallel = sin < _PARALLEL
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w_a = torch.where(parallel, 1.0 - tau, torch.sin((1.0 - tau) * theta) / safe)
    w_b = torch.where(parallel, tau, torch.sin(tau * theta) / safe)
    return w_a.to(a.dtype) * a + w_b.to(a.dtype) * b


def _slice_dim(volume_ndim: int, slice_axis: int) -> int:
    """The tensor dim of a spatial slice axis of a (B, C, X, Y, Z) volume."""
    if volume_ndim != 5:
        raise ValueError(f"DDS works on (B, C, X, Y, Z) volumes, got {volume_ndim} dims")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0 (X), 1 (Y) or 2 (Z), got {slice_axis!r}")
    return 2 + int(slice_axis)


def slice_correlated_noise(shape, slice_axis: int, generator: torch.Generator | None, *,
                           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Noise whose slice i along slice_axis is slerp(eps_1, eps_N, i / (N - 1)) of two Gaussian slices."""
    dim = _slice_dim(len(shape), slice_axis)
    count = int(shape[dim])
    one_slice = list(shape)
    one_slice[dim] = 1
    first = gaussian_noise(one_slice, generator, device, dtype)
    last = gaussian_noise(one_slice, generator, device, dtype)
    # D3IP.md: tau_i = i / (N - 1), so the two draws are exactly the end slices (Eq. 16 writes i / N)
    tau = torch.arange(count, dtype=torch.float64) / max(count - 1, 1)
    tau = tau.reshape([count if d == dim else 1 for d in range(len(shape))])
    return slerp(first, last, tau)


def dds_start(zero_filled: Tensor, schedule: NoiseSchedule, t: int, *, slice_axis: int,
              generator: torch.Generator | None) -> Tensor:
    """y_t = sqrt(alpha_bar_t) A^+ y + sqrt(1 - alpha_bar_t) eps, eps correlated across slices by slerp."""
    if zero_filled.is_complex():
        raise ValueError("dds_start: the prior is real-valued; pass a real zero-filled image (Re or |A^+ y|)")
    noise = slice_correlated_noise(zero_filled.shape, slice_axis, generator, device=zero_filled.device,
                                   dtype=zero_filled.dtype)
    # D3IP Eq. 16
    return schedule.q_sample(zero_filled, int(t), noise)


class DDSDataConsistency:
    """The DDS x0 hook: clip x0_hat to `clip`, then cg_steps CG steps on (gamma A^H A + I) x = gamma A^H y + x0_hat.

    `clip` is (low, high) or None; a prior normalised by scale only lives in about [0, 1.x], so the bounds are
    the caller's, not the sampler's symmetric clip_x0 (which, if set, has already been applied before this hook).
    """

    def __init__(self, operator: Any, y: Tensor, *, gamma: float = 5.0, cg_steps: int = 5,
                 clip: tuple[float, float] | None = None):
        """Keep the operator (anything with cg_data_consistency), the measurement and the solver's settings."""
        if not callable(getattr(operator, "cg_data_consistency", None)):
            raise TypeError(f"{type(operator).__name__} has no cg_data_consistency(x0_hat, y, gamma, num_steps)")
        if clip is not None and not clip[0] < clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, or None; got {clip!r}")
        if gamma < 0 or cg_steps < 0:
            raise ValueError(f"gamma and cg_steps must be >= 0, got {gamma!r} and {cg_steps!r}")
        self.operator, self.y = operator, y
        self.gamma, self.cg_steps, self.clip = float(gamma), int(cg_steps), clip

    def __call__(self, x0_hat: Tensor, t: int) -> Tensor:
        """The data-consistent x0 estimate at step t (the same at every t)."""
        if self.clip is not None:
            x0_hat = x0_hat.clamp(*self.clip)
        # D3IP Eq. 27-28 (DDS), M = cg_steps CG steps from x0_hat
        return self.operator.cg_data_consistency(x0_hat, self.y, self.gamma, self.cg_steps)

    def __repr__(self) -> str:
        return f"DDSDataConsistency(gamma={self.gamma}, cg_steps={self.cg_steps}, clip={self.clip})"


def dds_sample(denoiser: Denoiser, sampler: RespacedSampler, operator: Any, y: Tensor, zero_filled: Tensor, *,
               slice_axis: int, gamma: float = 5.0, cg_steps: int = 5, clip: tuple[float, float] | None = None,
               seed: int | None = None, generator: torch.Generator | None = None, condition: Any = None,
               progress: bool = False) -> Tensor:
    """DDS: `sample()` from the Eq. 16 start at the sampler's first timestep, with DDSDataConsistency as x0 hook.

    The start's two noise draws and then every step's noise come from one generator (`generator`, or a CPU
    generator seeded with `seed`), so a seed gives the same result on any device. Returns the last (hooked) x0.
    """
    if generator is not None and seed is not None:
        raise ValueError("give either a generator or a seed, not both")
    if seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    start = dds_start(zero_filled, sampler.schedule, int(sampler.timesteps[0]), slice_axis=slice_axis,
                      generator=generator)
    hook = DDSDataConsistency(operator, y, gamma=gamma, cg_steps=cg_steps, clip=clip)
    return sample(denoiser, sampler, None, condition, generator=generator, x0_hook=hook, start=start,
                  progress=progress)
