"""The adapting denoiser: D3IP's loop (D3IP.md, "The loop") plugged into the existing sampling loop.

`AdaptingDenoiser` wraps a volume eps-denoiser (a strategy over expert runners) and, at every sampler step inside
the horizon, first adapts the LoRA set of each separable expert (the runners whose slice axis is the one the
operator separates along) on a few slices, then returns the wrapped denoiser's eps for the whole volume, which
runs through the same, now adapted, experts. `sample()` runs under no_grad: only the few slices of an adaptation
step get a graph (torch.enable_grad around them), the whole-volume pass never does (pitfall 1).

One adaptation step of one expert at timestep t (L optimiser steps, AdamW re-created at every t):
    I <- `slices` random slices (mbir: a contiguous slab)        from the adaptation's own generator
    x0_I = Tweedie(X_I, eps_theta(X_I, t))                        not clipped (pitfall 7)
    loss = mean |A_I D(x0_I) - Y_I|^2                             D: CG, or slab TV-ADMM for mbir
    meta: theta <- theta_0 + alpha_j (theta - theta_0) after the L steps (Reptile, alpha linear over the steps)

Lifecycle of one sample: `begin(seed)` puts a fresh LoRA set into each adapted expert (or the `initial` weights),
the sampling loop runs, `end()` takes them out and returns their weights. A non-finite loss raises
`AdaptationDivergedError` (the caller reports the case as failed).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from diffens_auto.adaptation.lora_state import LoRAState
from diffens_auto.adaptation.settings import AdaptationSettings
from diffens_auto.adaptation.slices import draw_slices
from diffens_auto.diffusion.schedule import NoiseSchedule
from diffens_auto.errors import DiffensError


class AdaptationDivergedError(DiffensError, RuntimeError):
    """The adaptation loss or the LoRA weights stopped being finite."""


def separable_runners(runners: Sequence, slice_axis: int) -> list:
    """The runners whose expert slices along `slice_axis`, the axis the operator acts on slice by slice."""
    return [runner for runner in runners if int(runner.slice_axis) == int(slice_axis)]


class AdaptingDenoiser:
    """An eps denoiser whose separable experts adapt one shared LoRA set per step (module docstring)."""

    def __init__(self, denoiser, runners: Sequence, problem, settings: AdaptationSettings, *,
                 schedule: NoiseSchedule, timesteps: Sequence[int], prediction: str = "epsilon",
                 frame: torch.Tensor | None = None, initial: dict | None = None):
        """`runners` adapt (each with its `.expert`); `problem` is the case's measurement along the runners' slice
        axis, or {slice axis: problem} when they slice along several (SR); `timesteps` are the sampler's;
        `initial` {runner name: LoRA state_dict} starts from saved weights; `frame` is the experts' frame."""
        if not runners:
            raise ValueError("AdaptingDenoiser needs at least one expert to adapt.")
        self.denoiser, self.runners = denoiser, list(runners)
        self.problems = dict(problem) if isinstance(problem, Mapping) else {
            int(runner.slice_axis): problem for runner in self.runners}
        missing = [runner.name for runner in self.runners if int(runner.slice_axis) not in self.problems]
        if missing:
            raise ValueError(f"AdaptingDenoiser: no measurement problem along the slice axis of {missing}; give "
                             "one per slice axis of the adapted runners.")
        self.settings, self.schedule, self.prediction, self.frame = settings, schedule, prediction, frame
        adapted = [int(t) for t in timesteps if settings.in_horizon(int(t), schedule.num_train_steps)]
        self.positions = {t: i for i, t in enumerate(adapted)}
        self.initial = initial or {}
        self.states: list[LoRAState] = []
        self.generator: torch.Generator | None = None
        self.losses: list[float] = []

    # ------------------------------------------------------------------ one sample

    def begin(self, seed: int) -> None:
        """A fresh LoRA set in every adapted expert (or the initial weights), slice draws seeded by `seed`."""
        self.end()
        self.generator = torch.Generator().manual_seed(int(seed))
        for runner in self.runners:
            # a compiled copy was traced without the LoRA set: the adapted expert runs as the module itself
            if getattr(runner, "compiled", None) is not None:
                runner.compiled = None
            self.states.append(LoRAState(runner.expert, self.settings.lora_rank, self.settings.lora_scale,
                                         self.generator, self.initial.get(runner.name)))
        self.losses = []

    def end(self) -> dict:
        """Take the LoRA sets out of the experts; returns their weights {runner name: state_dict}."""
        weights = {runner.name: state.state_dict() for runner, state in zip(self.runners, self.states)}
        for state in self.states:
            state.remove()
        self.states = []
        return weights

    def reset(self) -> None:
        """Reset the wrapped denoiser's state (TPDM's turn), as the sampling loop does at its start."""
        reset = getattr(self.denoiser, "reset", None)
        if callable(reset):
            reset()

    # ------------------------------------------------------------------ the loop

    def __call__(self, y_t: torch.Tensor, condition, t: int) -> torch.Tensor:
        """Adapt (inside the horizon), then the whole volume's eps through the adapted experts."""
        if not self.states:
            raise RuntimeError("AdaptingDenoiser: call begin(seed) before sampling.")
        if int(t) in self.positions:
            for runner, state in zip(self.runners, self.states):
                self._adapt(runner, state, y_t, condition, int(t))
        return self.denoiser(y_t, condition, t)

    def _adapt(self, runner, state: LoRAState, y_t, condition, t: int) -> None:
        settings = self.settings
        axis = int(runner.slice_axis)
        problem = self.problems[axis]
        start, stop = problem.region(y_t.shape[2:])
        optimizer = torch.optim.AdamW(state.parameters, lr=settings.lr, weight_decay=settings.weight_decay)
        before = state.snapshot() if settings.method == "d3ip_meta" else None
        tv = ({"rho": settings.tv_rho, "lam": settings.tv_lambda, "admm_steps": settings.admm_steps}
              if settings.method == "d3ip_mbir" else None)
        for step in range(settings.steps):
            indices = draw_slices(start, stop, settings.slices, self.generator, contiguous=tv is not None,
                                  block=problem.block).to(y_t.device)
            with torch.enable_grad():
                y_slab = y_t.index_select(2 + axis, indices)
                output = runner.run_slices(y_t, condition, t, indices, positions=self.frame)
                eps = self.schedule.eps_from_v(y_slab, output, t) if self.prediction == "v" else output
                x0 = self.schedule.tweedie_x0(y_slab, eps.float(), t)
                loss = problem.loss(x0, indices, gamma=settings.dc_gamma, cg_steps=settings.dc_steps, tv=tv)
                if not bool(torch.isfinite(loss.detach())):
                    raise AdaptationDivergedError(
                        f"D3IP adaptation of expert {runner.name} diverged at t = {t}, optimiser step {step + 1}: "
                        f"loss {float(loss.detach())}. Fix: a smaller --adapt_lr (now {settings.lr:g}) or fewer --adapt_steps.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            self.losses.append(float(loss.detach()))
        if before is not None:
            state.reptile(before, settings.meta_alpha_at(self.positions[t], len(self.positions)))
        if not state.all_finite():
            raise AdaptationDivergedError(f"D3IP adaptation of expert {runner.name} diverged at t = {t}: the LoRA "
                                          "weights are no longer finite. Fix: a smaller --adapt_lr.")
