"""Samplers that walk a respaced subset of the training timesteps: DDIM and respaced ancestral DDPM.

Both have the shape of a diffusers scheduler: `.timesteps` (descending training-step indices, what the
network is called with), `.step(eps, t, y_t, *, noise=None, generator=None) -> (y_prev, x0_hat)` and
`.previous_timestep(t)`. Conventions shared by both:

- The step after a kept timestep t goes to the NEXT KEPT timestep (the next entry of `.timesteps`), never
  to `t - T // N`; after the last entry it goes to "no noise", alpha_bar_prev = 1 (diffusers'
  `set_alpha_to_one=True`; guided-diffusion's alpha_bar_prev = 1 at index 0). The last step therefore
  returns x0_hat itself.
- x0_hat = Tweedie's estimate (schedule.tweedie_x0), then clamped to [-clip_x0, clip_x0] when clip_x0 is
  set, then passed through the caller's x0_hook (consistency projection, data consistency) if any; the
  update uses that final x0_hat. `step_from_x0` is the update alone, for callers that build x0_hat
  themselves.
- Noise is injectable: `noise` (a tensor like y_t) wins; otherwise `gaussian_noise` draws it from `generator`
  (or torch's global CPU generator) on the generator's device and moves it to y_t's, and only when the step
  adds noise at all.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .schedule import NoiseSchedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "guided")
DDPM_VARIANCES = ("fixed_small", "fixed_large")
SAMPLERS = ("ddim", "ddpm")
ETA_CONVENTIONS = ("ddim", "dds")
# clip_x0 = true in the plans: data are normalised so that the robust foreground range maps to about [-1, 1];
# tails beyond the 0.5/99.5 percentiles and the zero background (-(p0.5 + p99.5) / (p99.5 - p0.5), about -1 to
# -1.5 for MRI) go further, and an SR residual (target - up(LR)) / 2 stays within the same bound. 2 keeps all
# of that and still stops the exploding x0 estimates of the first, noisiest steps.
DEFAULT_CLIP_X0 = 2.0

X0Hook = Callable[[Tensor, int], Tensor]


def gaussian_noise(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str,
                   dtype: torch.dtype) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved: a seed gives the same noise anywhere.

    A CPU generator with CUDA data (or the reverse) is fine; without a generator torch's global CPU generator
    is used.
    """
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


# ---------------------------------------------------------------------- which timesteps to visit


def space_timesteps(num_train_steps: int, section_counts: str | Iterable[int]) -> list[int]:
    """guided-diffusion's respacing: the kept training steps (ascending) for "50", "10,15,20", "ddim50" or [50]."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            # DDIM paper striding: the integer stride that gives exactly the desired count, starting at 0
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_train_steps):
                if len(range(0, num_train_steps, stride)) == desired:
                    return list(range(0, num_train_steps, stride))
            raise ValueError(f"cannot take exactly {desired} of {num_train_steps} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    section_counts = list(section_counts)
    # T steps cut into len(section_counts) near-equal sections (the first T % n one longer); each section
    # keeps `count` steps at a fractional stride that hits its first and last step, rounded like Python's
    # round() (half to even) on the running sum, as guided-diffusion does.
    size_per, extra = divmod(num_train_steps, len(section_counts))
    kept, start = [], 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot take {count} steps from a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respaced_timesteps(num_train_steps: int, num_steps: int, spacing: str) -> torch.Tensor:
    """The descending training steps a num_steps sampler visits (diffusers' spacings, steps_offset 0; or "guided")."""
    T, N = int(num_train_steps), int(num_steps)
    if not 1 <= N <= T:
        raise ValueError(f"num_steps must be in 1..{T}, got {N}")
    if spacing == "leading":
        # multiples of T // N from 0: 980, 960, ..., 0 for 50 of 1000 (never reaches T - 1)
        steps = [i * (T // N) for i in range(N)]
    elif spacing == "trailing":
        # counted back from T at the fractional stride T / N, minus one: 999, 979, ..., 19 for 50 of 1000
        steps = [round(T - i * (T / N)) - 1 for i in range(N)]
    elif spacing == "linspace":
        # N evenly spaced points over [0, T - 1], both ends included, rounded (numpy, half to even)
        steps = np.linspace(0, T - 1, N).round().astype(np.int64).tolist()
    elif spacing == "guided":
        steps = space_timesteps(T, [N])
    else:
        raise ValueError(f"Unknown timestep_spacing {spacing!r}; known: {', '.join(TIMESTEP_SPACINGS)}")
    steps = sorted({int(s) for s in steps}, reverse=True)
    if len(steps) != N or steps[-1] < 0 or steps[0] >= T:
        raise ValueError(f"spacing {spacing!r} does not give {N} distinct steps in 0..{T - 1}")
    return torch.tensor(steps, dtype=torch.long)


# ---------------------------------------------------------------------- the shared part


class RespacedSampler:
    """Timesteps, the previous-timestep map, x0 prediction and noise handling of both samplers."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int, timestep_spacing: str, clip_x0: float | None,
                 start_timestep: int | None = None):
        """`start_timestep` t' < T truncates the chain: the num_steps are spaced over [0, t'] as if the schedule
        had t' + 1 steps, and sampling starts from y0 = 0 noised to t' (`initial_noise_scale`)."""
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.timestep_spacing = timestep_spacing
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0 must be None or a positive bound, got {clip_x0!r}")
        self.clip_x0 = None if clip_x0 is None else float(clip_x0)
        T = schedule.num_train_steps
        if start_timestep is not None and not (isinstance(start_timestep, int) and 0 <= start_timestep < T):
            raise ValueError(f"start_timestep must be an integer in 0..{T - 1} (or None: from pure noise), got "
                             f"{start_timestep!r}")
        self.start_timestep = start_timestep
        span = T if start_timestep is None else start_timestep + 1
        self.timesteps = respaced_timesteps(span, num_steps, timestep_spacing)
        # y_t' = sqrt(alpha_bar_t') * 0 + sqrt(1 - alpha_bar_t') * eps: the start of a truncated chain whose y0
        # is 0 (an SR residual: the interpolated input); 1 for the full chain, which starts from pure noise
        first = int(self.timesteps[0])
        self.initial_noise_scale = 1.0 if start_timestep is None else math.sqrt(1.0 - float(schedule.alpha_bar[first]))
        visited = self.timesteps.tolist()
        self._index = {t: i for i, t in enumerate(visited)}
        self._previous = {t: (visited[i + 1] if i + 1 < len(visited) else -1) for i, t in enumerate(visited)}

    def _timestep(self, t: int | Tensor) -> int:
        """t as a Python int; t must be one of `.timesteps` (a tensor t must hold one value)."""
        if isinstance(t, Tensor):
            if t.numel() == 0 or not bool((t == t.reshape(-1)[0]).all()):
                raise ValueError("a sampler steps the whole batch at one timestep; got differing t")
            t = t.reshape(-1)[0]
        t = int(t)
        if t not in self._index:
            raise ValueError(f"timestep {t} is not one of this sampler's timesteps {self.timesteps.tolist()}")
        return t

    def previous_timestep(self, t: int | Tensor) -> int:
        """The timestep the step from t lands on: the next entry of `.timesteps`; -1 (alpha_bar = 1) after the last."""
        return self._previous[self._timestep(t)]

    def alpha_bars(self, t: int | Tensor) -> tuple[float, float]:
        """(alpha_bar_t, alpha_bar_prev) in float64; alpha_bar_prev = 1 after the last timestep."""
        t = self._timestep(t)
        prev = self._previous[t]
        return float(self.schedule.alpha_bar[t]), (float(self.schedule.alpha_bar[prev]) if prev >= 0 else 1.0)

    def predict_x0(self, eps: Tensor, t: int | Tensor, y_t: Tensor) -> Tensor:
        """Tweedie's x0_hat from the noise estimate, clamped to [-clip_x0, clip_x0] when clip_x0 is set."""
        x0 = self.schedule.tweedie_x0(y_t, eps, self._timestep(t))
        return x0 if self.clip_x0 is None else x0.clamp(-self.clip_x0, self.clip_x0)

    def step(self, eps: Tensor, t: int | Tensor, y_t: Tensor, *, noise: Tensor | None = None,
             generator: torch.Generator | None = None, x0_hook: X0Hook | None = None) -> tuple[Tensor, Tensor]:
        """One step t -> previous_timestep(t): x0_hat = hook(clip(Tweedie)), then the update -> (y_prev, x0_hat)."""
        t = self._timestep(t)
        x0_hat = self.predict_x0(eps, t, y_t)
        if x0_hook is not None:
            x0_hat = x0_hook(x0_hat, t)
        return self.step_from_x0(x0_hat, eps, t, y_t, noise=noise, generator=generator)

    def step_from_x0(self, x0_hat: Tensor, eps: Tensor | None, t: int | Tensor, y_t: Tensor, *,
                     noise: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The update from a given x0_hat (already clipped / projected); returns (y_prev, x0_hat)."""
        raise NotImplementedError

    def noise_std(self, t: int | Tensor) -> float:
        """The standard deviation of the fresh noise the step from t adds (0: the step draws none)."""
        raise NotImplementedError

    @staticmethod
    def _noise(noise: Tensor | None, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """The injected noise moved to like's device and dtype, else fresh noise from `gaussian_noise`."""
        if noise is not None:
            if noise.shape != like.shape:
                raise ValueError(f"noise shape {tuple(noise.shape)} != y_t shape {tuple(like.shape)}")
            return noise.to(device=like.device, dtype=like.dtype)
        return gaussian_noise(like.shape, generator, like.device, like.dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_steps={self.num_steps}, timestep_spacing={self.timestep_spacing!r}, "
                f"clip_x0={self.clip_x0}, timesteps {int(self.timesteps[0])}..{int(self.timesteps[-1])})")


# ---------------------------------------------------------------------- DDIM


class DDIMSampler(RespacedSampler):
    """DDIM (Song et al. 2021) on a respaced subset of the training steps.

    With a = alpha_bar_t and a' = alpha_bar_prev (a' = 1 after the last timestep):

        x0_hat = (y_t - sqrt(1 - a) eps) / sqrt(a)                                   (DDIM Eq. 9)
        sigma  = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')                   (DDIM Eq. 16)
        y_prev = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_dir + sigma * z        (DDIM Eq. 12)

    eta = 0 is deterministic DDIM, eta = 1 the DDPM posterior variance. eps_dir is the network's eps
    (`recompute_eps=False`, the default: diffusers' `use_clipped_model_output=False`, and what DDS / DDIP Eq. 7
    do after their data-consistency step, so a projection of x0_hat moves the sample by sqrt(a') times the
    correction) or, with `recompute_eps=True`, the eps implied by the final x0_hat,
    (y_t - sqrt(a) x0_hat) / sqrt(1 - a) (guided-diffusion's ddim_sample, diffusers'
    `use_clipped_model_output=True`). Without clipping and hook the two coincide up to rounding.

    `eta_convention="dds"` reads eta as the released DDS and D3IP samplers do (eta in [0, 1]; D3IP Eq. 7 writes
    eta eps + (1 - eta) eps_theta, which this variance-preserving form replaces):

        sigma  = eta * sqrt(1 - a')
        y_prev = sqrt(a') x0_hat + sqrt(1 - eta^2) * sqrt(1 - a') * eps_dir + sigma * z

    The same noise level at a' for every eta; eta = 0 is the default's deterministic step, eta = 1 pure fresh noise.

    Matches diffusers' DDIMScheduler(set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon") for
    "leading" and "trailing" spacing whenever N divides T; diffusers steps to t - T // N instead of to the
    next entry of its own timesteps, which differs for "linspace" and for N not dividing T.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, eta: float = 0.0, timestep_spacing: str = "leading",
                 clip_x0: float | None = None, *, recompute_eps: bool = False, start_timestep: int | None = None,
                 eta_convention: str = "ddim"):
        """DDIM over num_steps of the schedule's steps; eta in [0, 1] scales the injected noise (Eq. 16 or DDS's)."""
        super().__init__(schedule, num_steps, timestep_spacing, clip_x0, start_timestep)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if eta_convention not in ETA_CONVENTIONS:
            raise ValueError(f"Unknown eta_convention {eta_convention!r}; known: {', '.join(ETA_CONVENTIONS)}")
        if eta_convention == "dds" and eta > 1:
            raise ValueError(f"eta_convention 'dds' needs eta in [0, 1] (sqrt(1 - eta^2) scales eps), got {eta}")
        self.eta = float(eta)
        self.recompute_eps = bool(recompute_eps)
        self.eta_convention = eta_convention

    def noise_std(self, t: int | Tensor) -> float:
        """sigma_t(eta) of the step from t (DDIM Eq. 16, or DDS's eta sqrt(1 - a')); 0 for eta = 0 and on the last."""
        a, a_prev = self.alpha_bars(t)
        if self.eta_convention == "dds":
            return self.eta * math.sqrt(1 - a_prev)
        return self.eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)

    def step_from_x0(self, x0_hat: Tensor, eps: Tensor | None, t: int | Tensor, y_t: Tensor, *,
                     noise: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """DDIM Eq. 12 from a given x0_hat; eps may be None when recompute_eps is set."""
        t = self._timestep(t)
        a, a_prev = self.alpha_bars(t)
        sigma = self.noise_std(t)
        if self.recompute_eps:
            eps = self.schedule.eps_from_x0(y_t, x0_hat, t)
        elif eps is None:
            raise ValueError("eps is required unless recompute_eps=True")
        if self.eta_convention == "dds":
            direction = math.sqrt(1.0 - self.eta ** 2) * math.sqrt(1.0 - a_prev)
        else:
            # (1 - a') a (1/a' - 1) / (1 - a) >= 0 in exact arithmetic; max() only guards rounding
            direction = math.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0))
        y_prev = math.sqrt(a_prev) * x0_hat + direction * eps
        if sigma > 0:
            y_prev = y_prev + sigma * self._noise(noise, y_t, generator)
        return y_prev, x0_hat

    def __repr__(self) -> str:
        convention = "" if self.eta_convention == "ddim" else f", eta_convention={self.eta_convention!r}"
        return super().__repr__()[:-1] + f", eta={self.eta}, recompute_eps={self.recompute_eps}{convention})"


# ---------------------------------------------------------------------- respaced ancestral DDPM


class DDPMSampler(RespacedSampler):
    """Ancestral DDPM on a respaced subset of the training steps (guided-diffusion's SpacedDiffusion).

    The kept steps k_0 < k_1 < ... form a shorter diffusion with their own betas, from the kept alpha_bar:

        beta'_i = 1 - alpha_bar[k_i] / alpha_bar[k_{i-1}]        (alpha_bar[k_{-1}] := 1, so beta'_0 = beta_0)

    and each step samples the posterior q(y_{k_{i-1}} | y_{k_i}, x0_hat) of that diffusion
    (DDPM Eq. 6-7, with a = alpha_bar[k_i], a' = alpha_bar[k_{i-1}]):

        mean     = beta'_i sqrt(a') / (1 - a) * x0_hat + (1 - a') sqrt(1 - beta'_i) / (1 - a) * y_t
        variance = "fixed_small": beta'_i (1 - a') / (1 - a)  (the posterior variance, beta-tilde)
                   "fixed_large": beta'_i                      (DDPM's sigma^2 = beta)
        y_prev   = mean + sqrt(variance) * z,   no noise on the last step (it returns x0_hat)

    The network is still called with the original training step k_i (guided-diffusion's timestep_map,
    rescale_timesteps=False). The default "fixed_small" is what the authors' released samplers use (the
    Palette-derived 2D and the med-ddpm-derived 3D code sample with the clipped-log posterior variance);
    guided-diffusion's own default (learn_sigma=False, sigma_small=False) is "fixed_large". Default spacing
    "guided" keeps guided-diffusion's `space_timesteps(T, "N")` steps; the diffusers spacings work as well.
    With num_steps == T every spacing keeps all steps and this is plain DDPM (Eq. 11).
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int, timestep_spacing: str = "guided",
                 clip_x0: float | None = None, variance: str = "fixed_small", *, start_timestep: int | None = None):
        """Respaced ancestral DDPM over num_steps kept steps, with the posterior ("fixed_small") or beta variance."""
        super().__init__(schedule, num_steps, timestep_spacing, clip_x0, start_timestep)
        if variance not in DDPM_VARIANCES:
            raise ValueError(f"Unknown DDPM variance {variance!r}; known: {', '.join(DDPM_VARIANCES)}")
        self.variance = variance
        # the respaced diffusion, index i = position of k_i in ascending order (float64)
        kept = self.timesteps.flip(0)
        abar = schedule.alpha_bar[kept]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        self.kept_timesteps = kept
        self.betas = 1.0 - abar / abar_prev
        # DDPM Eq. 7: posterior mean coefficients and variance beta-tilde
        self.posterior_mean_x0_coef = self.betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_yt_coef = (1.0 - abar_prev) * (1.0 - self.betas).sqrt() / (1.0 - abar)
        self.posterior_variance = self.betas * (1.0 - abar_prev) / (1.0 - abar)

    def _position(self, t: int) -> int:
        """Index i of training step t among the kept steps in ascending order."""
        return self.num_steps - 1 - self._index[t]

    def noise_std(self, t: int | Tensor) -> float:
        """sqrt of the chosen variance of the step from t (0 on the last step, as guided-diffusion's nonzero_mask)."""
        i = self._position(self._timestep(t))
        if i == 0:
            return 0.0
        variance = self.posterior_variance[i] if self.variance == "fixed_small" else self.betas[i]
        return math.sqrt(float(variance))

    def step_from_x0(self, x0_hat: Tensor, eps: Tensor | None, t: int | Tensor, y_t: Tensor, *,
                     noise: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A sample of the posterior q(y_prev | y_t, x0_hat) (DDPM Eq. 6-7); eps is not used."""
        t = self._timestep(t)
        i = self._position(t)
        mean = float(self.posterior_mean_x0_coef[i]) * x0_hat + float(self.posterior_mean_yt_coef[i]) * y_t
        std = self.noise_std(t)
        if std > 0:
            mean = mean + std * self._noise(noise, y_t, generator)
        return mean, x0_hat

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", variance={self.variance!r})"


# ---------------------------------------------------------------------- from the plans


def clip_value(clip_x0: bool | float | None) -> float | None:
    """The plans' clip_x0 as a bound: true -> DEFAULT_CLIP_X0, a number -> itself, false / null -> no clipping."""
    if clip_x0 is None or clip_x0 is False:
        return None
    if clip_x0 is True:
        return DEFAULT_CLIP_X0
    return float(clip_x0)


def sampler_from_plans(diffusion: dict, schedule: NoiseSchedule | None = None,
                       num_steps: int | None = None) -> DDIMSampler | DDPMSampler:
    """The sampler the plans' `diffusion` entry describes ("sampler": "ddim" | "ddpm"); num_steps overrides.

    DDIM reads "eta", "eta_convention" (default "ddim"), "timestep_spacing" (default "leading") and
    "recompute_eps"; DDPM reads "ddpm_timestep_spacing" (default "guided", guided-diffusion's respacing) and
    "ddpm_variance"; both read "num_inference_steps", "clip_x0" and "start_timestep" (null: from pure noise at T).
    """
    schedule = schedule if schedule is not None else NoiseSchedule.from_plans(diffusion)
    kind = diffusion.get("sampler", "ddim")
    steps = int(num_steps if num_steps is not None else diffusion.get("num_inference_steps", 50))
    clip = clip_value(diffusion.get("clip_x0"))
    start = diffusion.get("start_timestep")
    start = None if start is None else int(start)
    if kind == "ddim":
        return DDIMSampler(schedule, steps, eta=float(diffusion.get("eta", 0.0)),
                           timestep_spacing=diffusion.get("timestep_spacing", "leading"), clip_x0=clip,
                           recompute_eps=bool(diffusion.get("recompute_eps", False)), start_timestep=start,
                           eta_convention=diffusion.get("eta_convention", "ddim"))
    if kind == "ddpm":
        # not "timestep_spacing": that is DDIM's (diffusers' "leading" by default) and would silently drop the
        # guided-diffusion respacing of the authors' DDPM sampler
        return DDPMSampler(schedule, steps, timestep_spacing=diffusion.get("ddpm_timestep_spacing", "guided"),
                           clip_x0=clip, variance=diffusion.get("ddpm_variance", "fixed_small"), start_timestep=start)
    raise ValueError(f"Unknown sampler {kind!r}; known: {', '.join(SAMPLERS)}")
