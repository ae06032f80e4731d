"""What one adapted prediction does: the D3IP variant and its hyperparameters (D3IP.md, Tab. 5 of the paper).

A task's plans carry an `adaptation` section (`planning.task_sections.KSPACE_ADAPTATION` for recon tasks): values
shared by every variant (LoRA rank and scale, the slices K drawn per optimiser step, the horizon zeta, AdamW's
weight decay) and one entry per variant (steps L and learning rate, plus the variant's own: TV-ADMM's rho, lambda
and ADMM passes for mbir, Reptile's alpha schedule for meta). `AdaptationSettings.resolve(method, section,
overrides)` merges them with the user's flags; the data consistency's gamma and CG steps are DDS's (the task's
`dds` section), so DDS and D3IP differ by the adaptation alone.

Variants:
- `d3ip`: one shared LoRA set, K distinct random slices per optimiser step (Alg. 2);
- `d3ip_mbir`: the same on a contiguous slab of K slices whose data consistency is slab TV-ADMM along the slice
  axis (Neumann boundary);
- `d3ip_meta`: d3ip with Reptile's interpolation theta <- theta_0 + alpha (theta - theta_0) after each step's
  updates, alpha falling linearly from meta_alpha[0] to meta_alpha[1] over the adapted steps;
- `ddip`: the per-slice baseline: every slice sampled on its own with a fresh LoRA set adapted on it alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from diffens_auto.errors import DiffensError

METHODS = ("none", "d3ip", "d3ip_mbir", "d3ip_meta", "ddip")
SHARED_KEYS = ("lora_rank", "lora_scale", "slices", "horizon", "weight_decay")
VARIANT_KEYS = ("steps", "lr", "slices", "tv_rho", "tv_lambda", "admm_steps", "meta_alpha")
# the settings each variant reads beyond steps, lr, LoRA, horizon and weight decay: a flag for another is refused
OWN_KEYS = {"d3ip": ("slices",), "d3ip_mbir": ("slices", "tv_rho", "tv_lambda", "admm_steps"),
            "d3ip_meta": ("slices", "meta_alpha"), "ddip": ()}
FLAGS = {"slices": "--adapt_slices", "steps": "--adapt_steps", "lr": "--adapt_lr", "lora_rank": "--lora_rank",
         "horizon": "--adapt_horizon", "tv_rho": "--tv_rho", "tv_lambda": "--tv_lambda", "admm_steps": "--admm_steps",
         "meta_alpha": "--meta_alpha"}


class AdaptationSettingsError(DiffensError, ValueError):
    """An adaptation setting (flag or plans value) that cannot be used, with the fix."""


@dataclass(frozen=True)
class AdaptationSettings:
    """The resolved settings of one variant; `method` "none" means DDS without adaptation."""

    method: str = "none"
    slices: int = 6                  # K: slices (SR: whole blocks) per optimiser step
    steps: int = 10                  # L: optimiser steps per adapted timestep
    lr: float = 1e-4
    weight_decay: float = 0.01       # AdamW's, re-created at every adapted timestep
    lora_rank: int = 4
    lora_scale: float = 1.0
    horizon: int = 40                # zeta: adapt for zeta <= t <= T - zeta, in training steps
    dc_gamma: float = 5.0            # the data consistency's (the dds section's, shared with DDS)
    dc_steps: int = 5
    tv_rho: float = 1e-3             # mbir: ADMM penalty
    tv_lambda: float = 1e-5          # mbir: TV weight along the slice axis
    admm_steps: int = 5              # mbir: ADMM passes (each with dc_steps CG steps)
    meta_alpha: tuple[float, float] = (1.0, 0.5)   # meta: Reptile's alpha at the first and the last adapted step

    def __post_init__(self):
        if self.method not in METHODS:
            raise AdaptationSettingsError(f"--adapt {self.method}: use one of {', '.join(METHODS)}.")
        if not self.active:
            return
        checks = [("slices", "--adapt_slices", self.slices >= 1, "at least 1"),
                  ("steps", "--adapt_steps", self.steps >= 1, "at least 1"),
                  ("lr", "--adapt_lr", self.lr > 0, "a learning rate > 0"),
                  ("weight_decay", "the plans' adaptation.weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("lora_rank", "--lora_rank", self.lora_rank >= 1, "a rank >= 1"),
                  ("horizon", "--adapt_horizon", self.horizon >= 0, "a training timestep >= 0"),
                  ("dc_gamma", "--dc_gamma", self.dc_gamma > 0, "gamma > 0 (the loss needs the measurement)"),
                  ("dc_steps", "--dc_steps", self.dc_steps >= 1, "at least 1 CG step"),
                  ("tv_rho", "--tv_rho", self.tv_rho > 0, "rho > 0"),
                  ("tv_lambda", "--tv_lambda", self.tv_lambda >= 0, "lambda >= 0"),
                  ("admm_steps", "--admm_steps", self.admm_steps >= 1, "at least 1 ADMM pass"),
                  ("meta_alpha", "--meta_alpha", len(self.meta_alpha) == 2 and all(0 < a <= 1 for a in
                                                                                  self.meta_alpha),
                   "START END, each in (0, 1]")]
        for name, flag, ok, wanted in checks:
            if not ok:
                raise AdaptationSettingsError(f"{flag} {getattr(self, name)!r}: give {wanted}.")

    @property
    def active(self) -> bool:
        """Whether anything is adapted."""
        return self.method != "none"

    def in_horizon(self, t: int, num_train_steps: int) -> bool:
        """Whether timestep t (training-step units) is adapted: zeta <= t <= T - zeta."""
        return self.horizon <= int(t) <= num_train_steps - self.horizon

    def meta_alpha_at(self, position: int, count: int) -> float:
        """Reptile's alpha at the position-th of `count` adapted steps (linear from start to end)."""
        start, end = self.meta_alpha
        return start if count <= 1 else start + (end - start) * position / (count - 1)

    def as_dict(self) -> dict:
        """The settings as prediction_settings.json records them."""
        record = dataclasses.asdict(self)
        record["meta_alpha"] = list(self.meta_alpha)
        return record

    @classmethod
    def resolve(cls, method: str, section: Mapping | None, overrides: Mapping | None = None, *,
                dc_gamma: float, dc_steps: int, task: str = "?") -> "AdaptationSettings":
        """The settings of `method`: the plans' shared values, then the variant's, then the user's overrides."""
        if method not in METHODS:
            raise AdaptationSettingsError(f"--adapt {method}: use one of {', '.join(METHODS)}.")
        given = {key: value for key, value in (overrides or {}).items() if value is not None}
        unused = [key for key in given if key in VARIANT_KEYS and key not in ("steps", "lr")
                  and key not in OWN_KEYS.get(method, ())]
        if method == "none" and given:
            unused = list(given)
        if unused:
            flags = " ".join(FLAGS.get(key, key) for key in unused)
            raise AdaptationSettingsError(f"{flags}: not used by --adapt {method}. Fix: leave them out, or choose the "
                                          "variant that uses them (documentation/adaptation.md).")
        if method == "none":
            return cls(dc_gamma=dc_gamma, dc_steps=dc_steps)
        if not section:
            raise AdaptationSettingsError(
                f"--adapt {method}: task '{task}' has no adaptation section in its plans (plans made before "
                "adaptation existed, or a task it does not apply to). Fix: plan the dataset again "
                "(diffens_plan_and_preprocess), or predict without --adapt.")
        values = {key: section[key] for key in SHARED_KEYS if key in section}
        variant = section.get(method)
        if not isinstance(variant, Mapping):
            raise AdaptationSettingsError(f"--adapt {method}: the plans' adaptation section of task '{task}' has no "
                                          f"'{method}' entry. Fix: plan the dataset again, or add it.")
        values.update({key: variant[key] for key in VARIANT_KEYS if key in variant})
        values.update(given)
        if method == "ddip":
            values["slices"] = 1      # one slice, its own problem
        if "meta_alpha" in values:
            values["meta_alpha"] = tuple(float(a) for a in values["meta_alpha"])
        return cls(method=method, dc_gamma=float(dc_gamma), dc_steps=int(dc_steps), **values)
