"""Crop a case to the bounding box of its non-zero voxels (the foreground: any channel != 0)."""
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


def crop_to_nonzero(data: np.ndarray, case_id: str = "?", files=None) -> tuple[np.ndarray, np.ndarray, BoundingBox]:
    """Crop `data` (C, X, Y, Z) to its foreground; return (cropped data, cropped bool mask, bbox)."""
    mask = nonzero_mask(data)
    if not mask.any():
        where = f" ({', '.join(str(f) for f in files)})" if files else ""
        raise EmptyCaseError(
            f"case {case_id}{where}: every voxel of every channel is 0, so there is no foreground to crop, "
            "normalise or learn from. Fix: replace the case's files with the real images or remove the case "
            "from the dataset (diffens_plan_and_preprocess --verify_dataset_integrity lists such cases).")
    bbox = bounding_box(mask)
    return crop_to_bbox(data, bbox), crop_to_bbox(mask, bbox), bbox


def paste_into_bbox(cropped: np.ndarray, bbox: BoundingBox, shape, fill=0) -> np.ndarray:
    """Inverse of crop_to_bbox for one (X, Y, Z) array: place `cropped` at `bbox` in a `shape` array of `fill`."""
    out = np.full(tuple(int(s) for s in shape), fill, dtype=cropped.dtype)
    expected = tuple(hi - lo for lo, hi in bbox)
    if tuple(cropped.shape) != expected:
        raise ValueError(f"paste_into_bbox: array shape {cropped.shape} does not match bbox size {expected}.")
    out[tuple(slice(lo, hi) for lo, hi in bbox)] = cropped
    return out
