"""Pad the spatial axes of a (B, C, X, Y, Z) tensor evenly before and after, and undo it (pure tensor code)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

Pads = list[tuple[int, int]]   # per spatial axis (before, after), X first


def even_pads(extras: Sequence[int]) -> Pads:
    """(before, after) per axis: each axis's extra voxels split in two, the larger half after."""
    return [(int(e) // 2, int(e) - int(e) // 2) for e in extras]


def pad_evenly(volume: torch.Tensor, extras: Sequence[int], value: float = 0.0) -> tuple[torch.Tensor, Pads]:
    """(padded volume, pads): `extras[i]` constant voxels added along spatial axis i, split by `even_pads`."""
    pads = even_pads(extras)
    if not any(before or after for before, after in pads):
        return volume, pads
    flat = [p for pair in reversed(pads) for p in pair]   # F.pad takes the last axis first
    return F.pad(volume, flat, value=float(value)), pads


def unpad(volume: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Undo `pad_evenly` on (..., X, Y, Z)."""
    region = tuple(slice(a, volume.shape[-3 + i] - b) for i, (a, b) in enumerate(pads))
    return volume[(..., *region)]
