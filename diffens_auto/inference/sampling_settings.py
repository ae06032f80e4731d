"""How a prediction samples: steps, sampler, eta, seed, samples per case, consistency, input grid, slice batch, and
a recon task's data consistency (gamma, CG steps), the first timestep; and what a prediction adapts (--adapt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffens_auto.adaptation.settings import METHODS
from diffens_auto.diffusion.samplers import SAMPLERS
from diffens_auto.inference.case_preparation import INPUT_GRIDS
from diffens_auto.inference.model import PredictionSetupError


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling options of a prediction (None: the plans' value); checked when made, with the flag to fix."""

    steps: int | None = None
    sampler: str | None = None             # "ddim" | "ddpm"
    eta: float | None = None               # DDIM only
    seed: int = 0                          # sample i of a case starts from seed + i
    num_samples: int = 1                   # > 1: their mean and a CASE_std map
    consistency: bool | None = None        # the consistency projection (None: the plans')
    input_grid: str = "lr"                 # SR: "lr" (low-resolution scan) or "hr" (already on the target grid)
    slice_batch_size: int | None = None    # slices per expert forward pass (None: the plans')
    dc_gamma: float | None = None          # recon: the data-to-prior weight of the CG data consistency (plans' dds)
    dc_steps: int | None = None            # recon: CG steps of the data consistency per sampling step (plans' dds)
    start_timestep: int | None = None      # the chain's first timestep t' (None: the plans'; recon: dds's 980)

    def __post_init__(self):
        if self.eta is not None and not self.eta >= 0:
            raise PredictionSetupError(f"--eta {self.eta}: DDIM's eta is >= 0 (0: deterministic DDIM, 1: DDPM-like "
                                       "noise).")
        if self.eta is not None and self.sampler == "ddpm":
            raise PredictionSetupError("--eta applies to the ddim sampler only; leave it out with --sampler ddpm.")
        if self.slice_batch_size is not None and self.slice_batch_size < 1:
            raise PredictionSetupError(f"--slice_batch_size {self.slice_batch_size}: give at least 1.")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise PredictionSetupError(f"--sampler {self.sampler}: use one of {SAMPLERS}.")
        if self.input_grid not in INPUT_GRIDS:
            raise PredictionSetupError(f"--input_grid {self.input_grid}: use one of {INPUT_GRIDS}.")
        if self.num_samples < 1:
            raise PredictionSetupError(f"--num_samples {self.num_samples}: give at least 1.")
        if self.steps is not None and self.steps < 1:
            raise PredictionSetupError(f"--steps {self.steps}: give at least 1.")
        if self.dc_gamma is not None and not self.dc_gamma >= 0:
            raise PredictionSetupError(f"--dc_gamma {self.dc_gamma}: gamma weighs the measurement against the prior's "
                                       "estimate; give a number >= 0 (0: the prior alone, default: the plans' 5).")
        if self.start_timestep is not None and not self.start_timestep >= 0:
            raise PredictionSetupError(f"--start_timestep {self.start_timestep}: give a training timestep >= 0 (the "
                                       "chain starts there; default: the plans').")
        if self.dc_steps is not None and self.dc_steps < 0:
            raise PredictionSetupError(f"--dc_steps {self.dc_steps}: give a number of CG steps >= 0.")


@dataclass(frozen=True)
class AdaptationRequest:
    """The --adapt flags of a prediction: the variant, the hyperparameters given (None: the plans'), the LoRA files."""

    method: str = "none"                       # none | d3ip | d3ip_mbir | d3ip_meta | ddip
    overrides: dict = field(default_factory=dict)   # slices, steps, lr, lora_rank, horizon, tv_rho, ... as given
    save_adapted: bool = False                 # write CASE_lora.pth beside each output
    lora: Path | None = None                   # start from these LoRA weights (a CASE_lora.pth)

    def __post_init__(self):
        if self.method not in METHODS:
            raise PredictionSetupError(f"--adapt {self.method}: use one of {', '.join(METHODS)}.")
        if self.method == "none" and (self.save_adapted or self.lora is not None):
            raise PredictionSetupError("--save_adapted / --lora: they need an adapted prediction. Fix: give --adapt "
                                       "d3ip (or another variant), or leave them out.")
        if self.lora is not None and not Path(self.lora).is_file():
            raise PredictionSetupError(f"--lora {self.lora}: file not found. Fix: give a CASE_lora.pth written by "
                                       "--save_adapted.")

    @property
    def active(self) -> bool:
        """Whether the prediction adapts."""
        return self.method != "none"
