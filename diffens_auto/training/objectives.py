"""What a training step predicts: eps_hat from (model, batch, y_t, t), for a 2D expert or the 3D ensembler."""
from __future__ import annotations

import torch

from diffens_auto.training.experts import FrozenExpert, run_experts


class ExpertObjective:
    """A 2D expert: eps_hat = expert(cat([y_t, condition]), t)."""

    kind = "expert"

    def __call__(self, model, batch: dict, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, _features = model(torch.cat([y_t, batch["condition"]], dim=1), t)
        return eps


class EnsemblerObjective:
    """The ensembler on the frozen experts' estimates over every slice of the patch (Eq. 5-6)."""

    kind = "ensembler"

    def __init__(self, experts: list[FrozenExpert], want_features: bool):
        self.experts = experts
        self.want_features = want_features

    def __call__(self, model, batch: dict, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_list, features = run_experts(self.experts, y_t, batch["condition"], t, want_features=self.want_features,
                                         positions=batch.get("positions"), target_params=batch.get("target_params"))
        return model(batch["condition"], y_t, eps_list, t, features)
