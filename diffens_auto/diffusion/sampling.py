"""The reverse-diffusion loop: start from noise, ask a volume denoiser for eps at each timestep, step."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .samplers import RespacedSampler, X0Hook, gaussian_noise

Denoiser = Callable[[Tensor, Any, int], Tensor]


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("give either a generator or a seed, not both")
    return torch.Generator("cpu").manual_seed(int(seed)) if seed is not None else generator


@torch.no_grad()
def sample(denoiser: Denoiser, sampler: RespacedSampler, shape: Sequence[int] | None, condition: Any = None, *,
           generator: torch.Generator | None = None, seed: int | None = None, x0_hook: X0Hook | None = None,
           start: Tensor | None = None, progress: bool = False, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Run the sampler from noise (or `start`) to y_0, calling denoiser(y_t, condition, t) -> eps at each timestep.

    A truncated sampler (start_timestep t' < T) starts from sqrt(1 - alpha_bar_t') times the noise: y0 = 0 noised
    to t', which for an SR residual is the interpolated input.

    Each step: eps = denoiser(y_t, condition, t); x0_hat = Tweedie's estimate, clipped if the sampler clips;
    x0_hat = x0_hook(x0_hat, t) when given (consistency projection, data consistency); then the sampler's
    update from that x0_hat. Returns the last y, which equals the last step's (hooked) x0_hat.

    Randomness: the start noise and every step's noise come, in that order, from `generator` or from a CPU
    generator seeded with `seed` (noise is drawn on the generator's device and moved to `device`), so a seed
    gives the same sample on any device; with neither, torch's global generator is used. Steps that add no
    noise (DDIM with eta 0, the last step) draw nothing.
    `start` replaces the initial noise (e.g. sqrt(alpha_bar_T') A^+ y + sqrt(1 - alpha_bar_T') eps, D3IP Eq. 16);
    it is taken to be y at sampler.timesteps[0]. device defaults to start's, else condition's (if a tensor), else
    CPU; dtype is that of the initial noise (start keeps its own). Runs under torch.no_grad(); a denoiser that
    needs gradients (test-time adaptation) enables them itself with torch.enable_grad(). A denoiser with a
    `reset()` method (the strategies) is reset first, so every sample starts in the same state.
    """
    generator = _generator(generator, seed)
    if start is not None:
        if shape is not None and tuple(shape) != tuple(start.shape):
            raise ValueError(f"shape {tuple(shape)} does not match start {tuple(start.shape)}")
        y = start.to(device) if device is not None else start
    else:
        if shape is None:
            raise ValueError("give the shape of the sample or a start volume")
        if device is None:
            device = condition.device if isinstance(condition, Tensor) else "cpu"
        y = gaussian_noise(shape, generator, device, dtype)
        scale = getattr(sampler, "initial_noise_scale", 1.0)
        if scale != 1.0:        # a truncated chain starts from y0 = 0 noised to its first timestep
            y = y * scale
    if hasattr(denoiser, "reset"):  # strategies that keep state between steps (TPDM's turn) start afresh
        denoiser.reset()
    steps = sampler.timesteps.tolist()
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="sampling", unit="step")
    for t in steps:
        eps = denoiser(y, condition, t)
        x0_hat = sampler.predict_x0(eps, t, y)
        if x0_hook is not None:
            x0_hat = x0_hook(x0_hat, t)
        noise = gaussian_noise(y.shape, generator, y.device, y.dtype) if sampler.noise_std(t) > 0 else None
        y, _ = sampler.step_from_x0(x0_hat, eps, t, y, noise=noise)
    return y

