"""Where a case sits in the plans' crop: the block-aligned offset of training's placement and validation's centred
one, the placed volume, and the position coordinates a prepared case gets in prediction.

Training places each case in the crop (`crop_size`) at a random block-aligned offset and validation at the centred
one; experts with position channels see the crop's coordinates (-1 at its first voxel, +1 at its last) cut at
that place. Prediction samples a case on its own padded grid, so `case_positions` gives it the coordinates of the
centred placement (continued linearly past the crop's edges for a case larger than the crop), the frame the
experts were trained in.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch


def block_step(task_plans: Mapping) -> tuple[int, int, int]:
    """The task's average-pooling factor per axis, the grid spatial moves keep: (1, 1, 1) for the other tasks.

    A k-space task has no block grid either: its mask is drawn on any grid, and its prior sees the target alone.
    """
    degradation = task_plans.get("degradation")
    if not degradation or degradation.get("type", "avgpool") != "avgpool":
        return (1, 1, 1)
    return tuple(int(f) for f in degradation["factor"])


def draw_block_offset(slack: int, step: int, rng: np.random.Generator, centred: bool = False) -> int:
    """A multiple of `step` in [0, slack] (slack >= 0) or [slack, 0] (slack < 0): uniform, or nearest slack / 2."""
    lo, hi = (0, slack // step) if slack >= 0 else (-(-slack // step), 0)
    k = int(np.clip(np.floor(slack / (2 * step) + 0.5), lo, hi)) if centred else int(rng.integers(lo, hi + 1))
    return k * step


def draw_placement(case_shape: Sequence[int], crop_shape: Sequence[int], step: Sequence[int],
                   rng: np.random.Generator, centred: bool = False) -> tuple[int, ...]:
    """Offset of a case in the crop per axis, a multiple of the factor (negative: a larger case is cut)."""
    return tuple(draw_block_offset(int(c) - int(n), int(s), rng, centred)
                 for n, c, s in zip(case_shape, crop_shape, step))


def place_in_crop(volume: np.ndarray, crop_shape: Sequence[int], offset: Sequence[int],
                  fill: Sequence[float]) -> np.ndarray:
    """(C, X, Y, Z) -> (C, *crop_shape): the volume at `offset`, channel c filled with fill[c] around it."""
    crop_shape = tuple(int(n) for n in crop_shape)
    out = np.empty((volume.shape[0],) + crop_shape, dtype=np.float32)
    out[...] = np.asarray(fill, dtype=np.float32).reshape(-1, 1, 1, 1)
    source, target = [slice(None)], [slice(None)]
    for n, c, o in zip(volume.shape[1:], crop_shape, offset):
        start, stop = max(o, 0), min(o + n, c)
        target.append(slice(start, max(stop, start)))
        source.append(slice(start - o, max(stop, start) - o))
    out[tuple(target)] = volume[tuple(source)]
    return out


def case_positions(case_shape: Sequence[int], pads: Sequence[Sequence[int]], crop_shape: Sequence[int],
                   step: Sequence[int], *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 3, *padded shape) coordinates of a prepared case: the crop's frame with the case placed as validation does.

    `case_shape` is the unpadded case, `pads` the [(before, after)] padding around it on each axis.
    """
    axes = []
    for n, (before, after), c, s in zip(case_shape, pads, crop_shape, step):
        offset = draw_block_offset(int(c) - int(n), int(s), None, centred=True) - int(before)
        index = torch.arange(int(n) + int(before) + int(after), device=device, dtype=torch.float64) + offset
        axes.append((2 * index / (int(c) - 1) - 1) if c > 1 else torch.zeros_like(index))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids, dim=0).unsqueeze(0).to(dtype)
