"""Low-rank adaptation (LoRA, Hu et al. 2021) of conv and linear layers, for D3IP test-time adaptation.

A wrapped layer computes base(x) + scale * up(down(x)). For nn.Linear, down is Linear(in, rank) and up
Linear(rank, out). For nn.ConvNd, down is a conv with the base's kernel, stride, padding and dilation to
`rank` channels and up a 1x1 conv to the output channels, so up(down(x)) is itself a conv whose kernel is
up @ down and can be merged into the base weights exactly. `up` starts at zero, so a freshly wrapped model
computes what the base model does. `scale` plays the role of alpha / rank in Hu et al.

While LoRA is active every base parameter of the model is frozen (D3IP Sec. 3: only the shared LoRA set
is adapted); `remove_lora` and `merge_lora` restore the modules and their requires_grad flags.
"""
import math

import torch
from torch import nn

from .blocks import AttentionBlock, ResBlock

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SAVED_FLAGS = "_lora_saved_requires_grad"   # per-parameter requires_grad before inject_lora, restored on removal


class LoRALinear(nn.Module):
    """nn.Linear plus a rank-`rank` update scale * up(down(x))."""

    def __init__(self, base: nn.Linear, rank: int = 4, scale: float = 1.0):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, float(scale)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.down = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.up = nn.Linear(rank, base.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update scale * up @ down in the shape of the base weight."""
        return self.scale * (self.up.weight @ self.down.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + scale * up(down(x))."""
        return self.base(x) + self.scale * self.up(self.down(x))


class LoRAConv(nn.Module):
    """nn.Conv1d/2d/3d plus a rank-`rank` update: same-kernel conv to `rank` channels, then 1x1 conv (zero-init)."""

    def __init__(self, base: nn.Module, rank: int = 4, scale: float = 1.0):
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRA supports only ungrouped convolutions (groups=1).")
        self.base, self.rank, self.scale = base, rank, float(scale)
        conv = type(base)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.down = conv(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                         dilation=base.dilation, padding_mode=base.padding_mode, bias=False, **factory)
        self.up = conv(rank, base.out_channels, 1, bias=False, **factory)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def delta_weight(self) -> torch.Tensor:
        """The update scale * up @ down as a kernel of the base weight's shape."""
        up = self.up.weight.flatten(1)                                   # (out, rank)
        down = self.down.weight.flatten(1)                               # (rank, in x kernel)
        return self.scale * (up @ down).reshape(self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + scale * up(down(x))."""
        return self.base(x) + self.scale * self.up(self.down(x))


LORA_LAYERS = (LoRALinear, LoRAConv)


def _in_blocks(name: str, block_names: set) -> bool:
    return any(prefix == "" or name.startswith(prefix + ".") for prefix in block_names)


def default_lora_target(model: nn.Module):
    """D3IP's choice: every conv and linear layer inside a ResBlock or an attention block."""
    blocks = {name for name, module in model.named_modules() if isinstance(module, (ResBlock, AttentionBlock))}
    return lambda name, module: _in_blocks(name, blocks)


def _set_child(model: nn.Module, name: str, child: nn.Module):
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, child)


def inject_lora(model: nn.Module, rank: int = 4, scale: float = 1.0, target=None, alpha: float | None = None) -> list:
    """Wrap every conv/linear layer for which target(name, module) holds; freeze all base parameters.

    `target` defaults to every conv and linear layer of the ResBlocks and attention blocks (D3IP);
    `alpha`, if given, sets scale = alpha / rank. Returns the wrapped layers.
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}.")
    if any(isinstance(module, LORA_LAYERS) for module in model.modules()):
        raise ValueError("The model already carries LoRA layers; remove_lora or merge_lora first.")
    if alpha is not None:
        scale = alpha / rank
    if target is None:
        target = default_lora_target(model)
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, (nn.Linear, *CONVS)) and target(name, module)]
    setattr(model, _SAVED_FLAGS, {name: p.requires_grad for name, p in model.named_parameters()})
    model.requires_grad_(False)
    wrapped = []
    for name, module in chosen:
        layer = LoRALinear(module, rank, scale) if isinstance(module, nn.Linear) else LoRAConv(module, rank, scale)
        _set_child(model, name, layer)
        wrapped.append(layer)
    return wrapped


def lora_parameters(model: nn.Module) -> list:
    """The trainable LoRA parameters (down and up weights) of every wrapped layer."""
    return [p for module in model.modules() if isinstance(module, LORA_LAYERS)
            for p in (*module.down.parameters(), *module.up.parameters())]


def _unwrap(model: nn.Module, merge: bool):
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LORA_LAYERS)]
    for name, module in wrapped:
        if merge:
            with torch.no_grad():
                module.base.weight.add_(module.delta_weight().to(module.base.weight.dtype))
        _set_child(model, name, module.base)
    flags = getattr(model, _SAVED_FLAGS, None)
    if flags is not None:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags.get(name, parameter.requires_grad))
        delattr(model, _SAVED_FLAGS)


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the original layers back (discarding the updates) and restore the requires_grad flags."""
    _unwrap(model, merge=False)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every update into its base weight (W += scale up @ down), then unwrap as remove_lora does."""
    _unwrap(model, merge=True)
    return model
