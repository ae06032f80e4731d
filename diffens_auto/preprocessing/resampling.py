"""Resample volumes between voxel spacings, with nnU-Net's separate-z treatment of anisotropic spacings.

Grid convention: the resampled grid covers the same physical extent as the input (voxel edges aligned, as
`skimage.transform.resize`), so output voxel o samples input coordinate (o + 0.5) * n_in / n_out - 0.5 along
each axis. Outside the input the edge value is repeated. Spline interpolation runs in float64, output is float32.

Separate-z rule: if max/min of the current spacing exceeds `anisotropy_threshold`, its single lowest-resolution
(largest-spacing) axis is resampled on its own; otherwise the same test is made on the new spacing. If the
anisotropic spacing has two equally coarse axes, everything is resampled in 3D. With a separate axis, every slice
perpendicular to it is resampled in 2D with `order`, then that axis in 1D with `order_z` (0 = nearest), so
thick-slice data is not smeared across slices by a cubic spline.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

AUTO = "auto"
# A target voxel is foreground if the trilinearly resampled original mask exceeds this, i.e. (almost) if any
# original foreground voxel is within one voxel of it: partial-volume voxels at the surface keep their signal
# (zeroing them, as a 0.5 threshold does, cost 4-6 dB PSNR of the inverted demo phantoms), while spline ringing
# further out is removed. The tiny margin above 0 ignores round-off in the interpolation weights.
FOREGROUND_THRESHOLD = 1e-3


def compute_new_shape(shape: Sequence[int], current_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Return round(shape * current_spacing / new_spacing), at least 1 voxel per axis."""
    ratio = np.asarray(current_spacing, dtype=np.float64) / np.asarray(new_spacing, dtype=np.float64)
    return tuple(max(1, int(round(s * r))) for s, r in zip(shape, ratio))


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    spacing = np.asarray(spacing, dtype=np.float64)
    coarse = np.flatnonzero(np.isclose(spacing, spacing.max(), rtol=1e-6, atol=0.0))
    return int(coarse[0]) if len(coarse) == 1 else None


def _is_anisotropic(spacing: Sequence[float], threshold: float) -> bool:
    spacing = np.asarray(spacing, dtype=np.float64)
    return spacing.max() / spacing.min() > threshold


def separate_z_axis(current_spacing: Sequence[float], new_spacing: Sequence[float],
                    anisotropy_threshold: float = 3.0) -> int | None:
    """Return the axis to resample on its own (the anisotropic spacing's coarsest axis), or None for full 3D."""
    if _is_anisotropic(current_spacing, anisotropy_threshold):
        return _lowres_axis(current_spacing)
    if _is_anisotropic(new_spacing, anisotropy_threshold):
        return _lowres_axis(new_spacing)
    return None


def _zoom(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resample every axis of `volume` to `new_shape` with a spline of `order` (extent-preserving grid)."""
    scale = np.asarray(volume.shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    return ndimage.affine_transform(volume, scale, offset=0.5 * scale - 0.5, output_shape=tuple(new_shape),
                                    order=order, mode="nearest", prefilter=order > 1)


def _zoom_separate(volume: np.ndarray, new_shape: Sequence[int], axis: int, order: int,
                   order_z: int) -> np.ndarray:
    """Resample each slice across `axis` in 2D with `order`, then along `axis` with `order_z`."""
    moved = np.moveaxis(volume, axis, 0)
    in_plane = tuple(s for a, s in enumerate(new_shape) if a != axis)
    if tuple(moved.shape[1:]) != in_plane:
        moved = np.stack([_zoom(s, in_plane, order) for s in moved])
    if moved.shape[0] != new_shape[axis]:
        moved = _zoom(moved, (new_shape[axis],) + in_plane, order_z)
    return np.moveaxis(moved, 0, axis)


def resample_data(data: np.ndarray, current_spacing: Sequence[float], new_spacing: Sequence[float],
                  new_shape: Sequence[int] | None = None, *, order: int = 3, order_z: int = 0,
                  anisotropy_threshold: float = 3.0, separate_z: int | None | str = AUTO) -> np.ndarray:
    """Resample `data` (C, X, Y, Z) from `current_spacing` to `new_spacing` (or `new_shape`); float32 out.

    `separate_z` = "auto" applies the separate-z rule (module docstring); an int forces that axis, None full 3D.
    """
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"resample_data expects (C, X, Y, Z) data, got shape {data.shape}.")
    shape = data.shape[1:]
    new_shape = tuple(int(s) for s in (new_shape if new_shape is not None
                                       else compute_new_shape(shape, current_spacing, new_spacing)))
    if new_shape == tuple(shape):
        return data.astype(np.float32, copy=True)
    axis = separate_z_axis(current_spacing, new_spacing, anisotropy_threshold) if separate_z == AUTO else separate_z
    out = np.empty((data.shape[0],) + new_shape, dtype=np.float32)
    for c in range(data.shape[0]):
        channel = data[c].astype(np.float64)
        out[c] = _zoom(channel, new_shape, order) if axis is None else \
            _zoom_separate(channel, new_shape, axis, order, order_z)
    return out


def resample_mask(mask: np.ndarray, current_spacing: Sequence[float], new_spacing: Sequence[float],
                  new_shape: Sequence[int] | None = None, *, method: str = "linear",
                  threshold: float = 0.5) -> np.ndarray:
    """Resample a binary (X, Y, Z) mask: "linear" (trilinear, then > `threshold`) or "nearest"; returns bool."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"resample_mask expects an (X, Y, Z) mask, got shape {mask.shape}.")
    new_shape = tuple(int(s) for s in (new_shape if new_shape is not None
                                       else compute_new_shape(mask.shape, current_spacing, new_spacing)))
    if new_shape == mask.shape:
        return mask.astype(bool, copy=True)
    if method == "linear":
        return _zoom(mask.astype(np.float32), new_shape, 1) > threshold
    if method == "nearest":
        return _zoom(mask.astype(np.uint8), new_shape, 0).astype(bool)
    raise ValueError(f"resample_mask: method must be 'linear' or 'nearest', got {method!r}.")


def extend_foreground(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Return a copy of (C, X, Y, Z) `data` whose background voxels take the value of the nearest foreground voxel.

    Resampling a hard-edged image (bright tissue next to background 0) smears the edge into the surface voxels;
    with the background filled from inside, interpolation near the surface sees only tissue values, and the
    background is zeroed again afterwards with the resampled mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return data.copy()
    nearest = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    return data[(slice(None), *nearest)]


def foreground_at_spacing(mask: np.ndarray, current_spacing: Sequence[float], new_spacing: Sequence[float],
                          new_shape: Sequence[int]) -> np.ndarray:
    """The foreground mask preprocessing keeps at the new spacing (and inversion recomputes the same way)."""
    resampled = resample_mask(mask, current_spacing, new_spacing, new_shape, threshold=FOREGROUND_THRESHOLD)
    if not resampled.any():  # a foreground of a voxel or two can vanish at a coarser spacing: keep its nearest voxels
        resampled = resample_mask(mask, current_spacing, new_spacing, new_shape, method="nearest")
    return resampled
