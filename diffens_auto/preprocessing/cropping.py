"""Crop a case to the bounding box of its non-zero voxels (the foreground: any channel != 0), and paste it back."""
from __future__ import annotations

import numpy as np

from diffens_auto.foreground import BoundingBox, EmptyCaseError, bounding_box, crop_to_bbox, nonzero_mask


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
