"""The noise schedule of a variance-preserving diffusion: betas, alpha_bar, forward noising and Tweedie's x0.

Notation (DDPM, Ho et al. 2020): beta_t is the variance added by forward step t, alpha_t = 1 - beta_t and
alpha_bar_t = prod_{s<=t} alpha_s, for training-step indices t = 0 .. T-1. Index t = 0 is the first, least
noisy, step: alpha_bar_0 = 1 - beta_0, not 1. "No noise at all" (alpha_bar = 1) is not an index of this
table; the samplers use it for the step after t = 0 (see samplers.py).

All tables are float64 tensors on the CPU. The methods below read the coefficients they need in float64 and
apply them in the dtype and on the device of the data, so a float32 (or bfloat16) volume stays float32.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "cosine")


class NoiseSchedule:
    """Betas, alphas and alpha_bar of a discrete diffusion with T training steps (float64, CPU)."""

    def __init__(self, betas: Tensor):
        """Build the schedule from its betas (1-D, each in (0, 1)); alphas and alpha_bar follow."""
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        self.betas = betas
        self.alphas = 1.0 - betas
        # DDPM Eq. 4: alpha_bar_t = prod_{s<=t} (1 - beta_s)
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.num_train_steps = int(betas.numel())
        self._sqrt_alpha_bar = self.alpha_bar.sqrt()
        self._sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def linear(cls, num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM's linear schedule: betas evenly spaced from beta_start to beta_end, both included."""
        # Same values as diffusers' beta_schedule="linear" and guided-diffusion's "linear" at T = 1000
        # (guided-diffusion rescales the end points by 1000 / T for other T; we take them as given).
        return cls(torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_train_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal's cosine schedule; betas capped at max_beta to avoid a singular last step."""
        def f(u: float) -> float:
            # Improved DDPM Eq. 17: alpha_bar(u) = f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) * pi / 2)
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        T = num_train_steps
        # beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T)   (the f(0) normalisation cancels)
        betas = [min(1 - f((t + 1) / T) / f(t / T), max_beta) for t in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    @classmethod
    def from_plans(cls, diffusion: dict) -> "NoiseSchedule":
        """The schedule the plans' `diffusion` entry describes (beta_schedule "linear" or "cosine")."""
        kind = diffusion.get("beta_schedule", "linear")
        steps = int(diffusion.get("num_train_steps", 1000))
        if kind == "linear":
            return cls.linear(steps, float(diffusion.get("beta_start", 1e-4)), float(diffusion.get("beta_end", 0.02)))
        if kind == "cosine":
            return cls.cosine(steps, float(diffusion.get("cosine_s", 0.008)), float(diffusion.get("max_beta", 0.999)))
        raise ValueError(f"Unknown beta_schedule {kind!r}; known: {', '.join(BETA_SCHEDULES)}")

    # ------------------------------------------------------------------ coefficients

    def _at(self, values: Tensor, t: int | Tensor, like: Tensor) -> float | Tensor:
        """values[t] ready to multiply `like`: a float for one t, else a (B, 1, ...) tensor in like's dtype."""
        if isinstance(t, Tensor) and t.ndim > 0:
            if t.ndim != 1 or t.shape[0] != like.shape[0]:
                raise ValueError(f"t must be an int or a (B,) tensor with B = {like.shape[0]}, got {tuple(t.shape)}")
            self._check_range(int(t.min()), int(t.max()))
            picked = values[t.detach().cpu().long()]
            return picked.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
        step = int(t)
        self._check_range(step, step)
        return float(values[step])

    def _check_range(self, low: int, high: int) -> None:
        if low < 0 or high >= self.num_train_steps:
            raise IndexError(f"timestep out of range 0..{self.num_train_steps - 1}: {low if low < 0 else high}")

    # ------------------------------------------------------------------ forward process and its inverses

    def q_sample(self, y0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """Forward noising y_t = sqrt(alpha_bar_t) y0 + sqrt(1 - alpha_bar_t) noise."""
        # DDPM Eq. 4 (closed form of q(y_t | y_0))
        return self._at(self._sqrt_alpha_bar, t, y0) * y0 + self._at(self._sqrt_one_minus_alpha_bar, t, y0) * noise

    def tweedie_x0(self, y_t: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """Tweedie's estimate x0 = (y_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        # DDIM Eq. 9 / Diff-Ensembler Sec. 3.1: DDPM Eq. 4 solved for y_0
        return (y_t - self._at(self._sqrt_one_minus_alpha_bar, t, y_t) * eps) / self._at(self._sqrt_alpha_bar, t, y_t)

    def eps_from_x0(self, y_t: Tensor, x0: Tensor, t: int | Tensor) -> Tensor:
        """The noise that maps x0 to y_t: eps = (y_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)."""
        # DDPM Eq. 4 solved for eps
        return (y_t - self._at(self._sqrt_alpha_bar, t, y_t) * x0) / self._at(self._sqrt_one_minus_alpha_bar, t, y_t)

    def v_from_noise(self, y0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """The velocity v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) y0 (Salimans & Ho 2022, Sec. 4)."""
        return self._at(self._sqrt_alpha_bar, t, y0) * noise - self._at(self._sqrt_one_minus_alpha_bar, t, y0) * y0

    def eps_from_v(self, y_t: Tensor, v: Tensor, t: int | Tensor) -> Tensor:
        """The noise of a velocity estimate: eps = sqrt(1 - alpha_bar_t) y_t + sqrt(alpha_bar_t) v."""
        return self._at(self._sqrt_one_minus_alpha_bar, t, y_t) * y_t + self._at(self._sqrt_alpha_bar, t, y_t) * v

    def __repr__(self) -> str:
        return (f"NoiseSchedule(T={self.num_train_steps}, "
                f"beta {float(self.betas[0]):.3g}..{float(self.betas[-1]):.3g}, "
                f"alpha_bar_T-1={float(self.alpha_bar[-1]):.3g})")
