"""One shared LoRA set on a prior expert for the duration of one sample: inject, reset, Reptile, save, remove.

The LoRA layers (`networks.lora`) are put into the expert itself (no copy of the network: the state is the
rank-r factors, kilobytes to megabytes) and taken out again when the sample is done, so the next sample and the
next case start from the trained prior (D3IP.md pitfall 3). `up` starts at zero, so a fresh set leaves the prior
unchanged; `down` is drawn from the adaptation's own seeded generator, so a seed gives the same adaptation.
The expert stays in eval mode throughout (pitfall 4).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from diffens_auto.networks.lora import LORA_LAYERS, inject_lora, lora_parameters, remove_lora


class LoRAState:
    """The LoRA set of one expert during one sample (used as a context manager: removed on exit)."""

    def __init__(self, expert: nn.Module, rank: int, scale: float, generator: torch.Generator,
                 initial: dict | None = None):
        """Wrap `expert`'s ResBlock and attention layers; `initial` (a `state_dict()`) starts from saved weights."""
        self.expert = expert
        self.layers = inject_lora(expert, rank=rank, scale=scale)
        self.parameters = lora_parameters(expert)
        self._init_down(generator)
        if initial is not None:
            try:
                self.load_state_dict(initial)
            except ValueError:
                self.remove()       # the expert must not keep a half-made set
                raise

    def _init_down(self, generator: torch.Generator) -> None:
        """Kaiming-uniform `down` factors (as nn.Linear/Conv initialise) from the seeded generator; `up` stays 0."""
        with torch.no_grad():
            for layer in self.layers:
                weight = layer.down.weight
                bound = 1.0 / math.sqrt(weight[0].numel())
                values = torch.rand(weight.shape, generator=generator, dtype=torch.float64) * 2 - 1
                weight.copy_((values * bound).to(weight.dtype))

    def snapshot(self) -> list[torch.Tensor]:
        """Detached copies of the LoRA parameters (theta_0 of a Reptile step)."""
        return [p.detach().clone() for p in self.parameters]

    def reptile(self, start: list[torch.Tensor], alpha: float) -> None:
        """theta <- start + alpha (theta - start): Reptile's interpolation towards the adapted parameters."""
        with torch.no_grad():
            for p, p0 in zip(self.parameters, start):
                p.copy_(p0 + alpha * (p - p0))

    def all_finite(self) -> bool:
        """Whether every LoRA parameter is finite (a diverged adaptation is not)."""
        return all(bool(torch.isfinite(p).all()) for p in self.parameters)

    def state_dict(self) -> dict:
        """The LoRA factors by layer name, on the CPU: what `--save_adapted` writes (loadable with weights_only)."""
        names = {id(layer): name for name, layer in self.expert.named_modules() if isinstance(layer, LORA_LAYERS)}
        state = {}
        for layer in self.layers:
            state[f"{names[id(layer)]}.down"] = layer.down.weight.detach().cpu().clone()
            state[f"{names[id(layer)]}.up"] = layer.up.weight.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Set the factors from `state_dict()` output; a set for another network or rank is refused."""
        names = {name: layer for name, layer in self.expert.named_modules() if isinstance(layer, LORA_LAYERS)}
        expected = {f"{name}.{part}" for name in names for part in ("down", "up")}
        if set(state) != expected:
            missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
            raise ValueError(f"The LoRA weights do not fit this expert (missing {missing}, unexpected {extra}): "
                             "they were saved for another network or LoRA set.")
        with torch.no_grad():
            for key, value in state.items():
                name, _, part = key.rpartition(".")
                weight = getattr(names[name], part).weight
                if tuple(value.shape) != tuple(weight.shape):
                    raise ValueError(f"LoRA weight {key} has shape {tuple(value.shape)}, this expert's "
                                     f"{tuple(weight.shape)} (another --lora_rank?).")
                weight.copy_(value.to(weight.dtype))

    def num_bytes(self) -> int:
        """Bytes of the LoRA parameters (one copy; AdamW keeps two more)."""
        return sum(p.numel() * p.element_size() for p in self.parameters)

    def remove(self) -> None:
        """Take the LoRA layers out: the expert is the trained prior again."""
        remove_lora(self.expert)

    def __enter__(self) -> "LoRAState":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
