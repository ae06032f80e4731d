"""D3IP test-time adaptation: one shared LoRA set of a 2D prior adapted on a few slices during sampling.

Pure like the core (tensors in, tensors out): `settings` (the variant and its hyperparameters), `slices` (the
draws), `consistency` (the differentiable CG and slab TV-ADMM estimators), `lora_state` (the LoRA set of one
sample), `problems` (a case's measurement slab by slab), `adapter` (the denoiser that plugs into `sample()`).
documentation/adaptation.md says what each variant is for and costs.
"""
from diffens_auto.adaptation.adapter import AdaptationDivergedError, AdaptingDenoiser, separable_runners
from diffens_auto.adaptation.lora_state import LoRAState
from diffens_auto.adaptation.problems import KSpaceSlices, PooledOperator, PooledSlices
from diffens_auto.adaptation.settings import METHODS, AdaptationSettings, AdaptationSettingsError

__all__ = ["AdaptationDivergedError", "AdaptationSettings", "AdaptationSettingsError", "AdaptingDenoiser",
           "KSpaceSlices", "LoRAState", "METHODS", "PooledOperator", "PooledSlices", "separable_runners"]
