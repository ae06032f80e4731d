"""Exponential moving average (EMA) of a model's weights, used for validation and inference.

After update n (n = 0, 1, ...) the averaged weights are  ema <- d_n * ema + (1 - d_n) * weights  with the
warm-up decay d_n = min(d, (1 + n) / (10 + n)) (as in TensorFlow's ExponentialMovingAverage with num_updates),
so early updates follow the fast-moving weights and the average settles to decay d later. Buffers (none in the
diffusion U-Nets, which use GroupNorm) are copied, not averaged.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, or the model itself."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class EMA:
    """An averaged copy of a model (`ema.model`, in eval mode, without gradients)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {decay}.")
        self.decay = float(decay)
        self.num_updates = 0
        self.model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses: min(d, (1 + n) / (10 + n))."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's current weights (call after every optimizer step)."""
        decay = self.current_decay()
        source = unwrap(model)
        for averaged, current in zip(self.model.parameters(), source.parameters()):
            averaged.lerp_(current.detach().to(averaged.dtype), 1.0 - decay)
        for averaged, current in zip(self.model.buffers(), source.buffers()):
            averaged.copy_(current)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Plain types and tensors only (loads with torch.load(weights_only=True))."""
        return {"decay": self.decay, "num_updates": self.num_updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["weights"])
