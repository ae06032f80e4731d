"""Voxel-wise metrics of a prediction against its reference: PSNR, MAE and MACE, optionally inside a region mask.

Every function takes same-shaped arrays (any number of dimensions), computes in float64 and returns a Python
float; `mask` (bool or 0/1, same shape) restricts the voxels that count. An empty region gives NaN.
"""
from __future__ import annotations

import numpy as np


def region_index(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | slice:
    """Index selecting the region's voxels (all voxels without a mask)."""
    if mask is None:
        return slice(None)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {list(mask.shape)} differs from the image shape {list(shape)}")
    return mask.astype(bool, copy=False)


def _values(mask: np.ndarray | None, *arrays: np.ndarray) -> list[np.ndarray]:
    """The region's voxels of each array as float64 vectors; all arrays must have one shape."""
    arrays = [np.asarray(a) for a in arrays]
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"arrays of different shapes {list(shape)} and {list(a.shape)} cannot be compared")
    index = region_index(mask, shape)
    return [np.asarray(a[index], dtype=np.float64).ravel() for a in arrays]


def reference_data_range(reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The default data range: max − min of the reference inside `mask` (NaN for an empty region)."""
    (values,) = _values(mask, reference)
    return float(values.max() - values.min()) if values.size else float("nan")


def check_data_range(data_range: float | None) -> None:
    """Refuse a given data range that cannot scale an error (zero, negative or not finite)."""
    if data_range is not None and not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range {data_range}: give a positive finite number (the intensity span, e.g. 1.0 "
                         "for images in [0, 1]) or None for the reference's max − min")


def psnr(reference: np.ndarray, prediction: np.ndarray, data_range: float | None = None,
         mask: np.ndarray | None = None) -> float:
    """PSNR in dB, 10·log10(data_range² / MSE); data_range defaults to the reference's max − min inside `mask`."""
    check_data_range(data_range)
    ref, pred = _values(mask, reference, prediction)
    if ref.size == 0:
        return float("nan")
    if data_range is None:
        data_range = float(ref.max() - ref.min())
        if data_range == 0:  # a constant reference has no intensity span to compare the error with
            return float("nan")
    mse = float(np.mean((ref - pred) ** 2))
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range ** 2 / mse))


def mae(reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, mean |y_i − ŷ_i| over the voxels inside `mask`."""
    ref, pred = _values(mask, reference, prediction)
    return float(np.mean(np.abs(ref - pred))) if ref.size else float("nan")


def mace(reference: np.ndarray, mean: np.ndarray, std: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute calibration error, mean |σ_i − |y_i − μ_i|| over voxels (μ, σ: mean and std of samples)."""
    # Diff-Ensembler's uncertainty calibration: a calibrated std map predicts the size of the error voxel by voxel.
    ref, mu, sigma = _values(mask, reference, mean, std)
    return float(np.mean(np.abs(sigma - np.abs(ref - mu)))) if ref.size else float("nan")
