"""The foreground of a case (any channel != 0) and its bounding box; numpy only, so every stage can use it."""
from __future__ import annotations

import numpy as np

from diffens_auto.errors import DiffensError

BoundingBox = list[list[int]]  # [[lo, hi), ...] per spatial axis (X, Y, Z)


class EmptyCaseError(DiffensError, ValueError):
    """Every voxel of every channel of a case is zero, so it has no foreground."""


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Return the foreground of `data` (C, X, Y, Z): a bool (X, Y, Z) array, True where any channel != 0."""
    # Unlike nnU-Net no holes are filled: the mask marks true background, which must stay exactly 0 on inversion.
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"nonzero_mask expects (C, X, Y, Z) data, got shape {data.shape}.")
    return np.any(data != 0, axis=0)


def bounding_box(mask: np.ndarray) -> BoundingBox:
    """Return the smallest box [[lo, hi), ...] holding every True voxel of `mask`; ValueError if there is none."""
    mask = np.asarray(mask, dtype=bool)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            raise EmptyCaseError("bounding_box: the mask has no True voxel.")
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop_to_bbox(array: np.ndarray, bbox: BoundingBox) -> np.ndarray:
    """Crop the last len(bbox) axes of `array` to `bbox` (a view)."""
    spatial = tuple(slice(lo, hi) for lo, hi in bbox)
    return array[(Ellipsis,) + spatial]
