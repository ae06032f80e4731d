"""A task's degradation applied to an image WITH its geometry, and the inverse grid for prediction.

Geometry follows `diffens_auto.imageio` props dicts: world (LPS, mm) position of canonical index i is
origin + direction @ (spacing * i), direction columns = the axes' unit vectors. (The few lines of geometry are
written here on plain dicts so the operators import no stage.)

Average pooling by f: low-resolution voxel i is the mean of the high-resolution block f·i … f·i + f − 1, so its
centre is that block's centre:
    spacing_lr = spacing · f,   origin_lr = origin + direction @ (spacing · (f − 1) / 2),   shape = ceil(shape / f),
direction unchanged, everything else (reorientation, io, ...) copied. For a partial last block (shape not divisible)
the low-resolution grid is still regular, so that voxel's centre is the centre of the FULL block, which lies past
the centroid of its real voxels (by spacing · (f − r) / 2 for r real voxels): the last voxel's value is the mean
of the real voxels only (see `AvgPoolSR`), its position that of the full block.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import numpy as np

from diffens_auto.operators.avgpool import AvgPoolSR, as_factor, avgpool_downsample, lowres_shape

SUPPORTED_DEGRADATIONS = ("avgpool",)   # what operator_for and degrade_image build (a kspace one: see _check)


def _check(degradation: Mapping) -> tuple[int, ...]:
    kind = degradation.get("type") if isinstance(degradation, Mapping) else None
    if kind == "kspace":
        # its operator is not a function of the task alone: the mask is drawn on each case's own grid (and seed),
        # and a measurement lives in the file's own axes
        raise ValueError(f"The degradation {dict(degradation)!r} undersamples k-space: operator_for and "
                         "degrade_image build only average pooling. Fix: build the case's operator with "
                         "operators.kspace_mask(degradation, shape, seed=...) and "
                         "FileOrderKSpace.from_canonical_mask(reorientation, mask, kspace_fft_axes(degradation)).")
    if kind not in SUPPORTED_DEGRADATIONS:
        raise ValueError(f"Unknown degradation {degradation!r}: supported types are {list(SUPPORTED_DEGRADATIONS)} "
                         f"(e.g. {{'type': 'avgpool', 'factor': [4, 4, 4]}}).")
    return as_factor(degradation["factor"])


def operator_for(degradation: Mapping) -> AvgPoolSR:
    """The linear operator A of a task's average-pooling degradation ({"type": "avgpool", "factor": [fx, fy, fz]})."""
    return AvgPoolSR(_check(degradation))


def _shifted(props: Mapping, shift_in_axis_units) -> list[float]:
    """origin + direction @ shift (shift in mm along the canonical axes)."""
    direction = np.asarray(props["direction"], float)
    return [float(v) for v in np.asarray(props["origin"], float) + direction @ np.asarray(shift_in_axis_units, float)]


def lowres_grid(props: Mapping, factor: int | Sequence[int]) -> dict:
    """Props of the block-centre grid of `props` pooled by `factor` (see the module docstring)."""
    factor = np.asarray(as_factor(factor), float)
    spacing = np.asarray(props["spacing"], float)
    out = copy.deepcopy(dict(props))
    out.update(spacing=[float(s) for s in spacing * factor], origin=_shifted(props, spacing * (factor - 1) / 2),
               shape=list(lowres_shape(props["shape"], factor.astype(int))))
    return out


def highres_grid(lowres_props: Mapping, factor: int | Sequence[int], hr_shape: Sequence[int] | None = None) -> dict:
    """Inverse of `lowres_grid`: spacing / f, origin moved back half a block, shape × f (or hr_shape if given)."""
    factor = np.asarray(as_factor(factor), float)
    spacing_hr = np.asarray(lowres_props["spacing"], float) / factor
    shape = [int(n * f) for n, f in zip(lowres_props["shape"], factor)] if hr_shape is None else list(hr_shape)
    if lowres_shape(shape, factor.astype(int)) != tuple(int(n) for n in lowres_props["shape"]):
        raise ValueError(f"highres_grid: shape {shape} does not pool by {factor.astype(int).tolist()} to "
                         f"{list(lowres_props['shape'])}.")
    out = copy.deepcopy(dict(lowres_props))
    out.update(spacing=[float(s) for s in spacing_hr], origin=_shifted(lowres_props, -spacing_hr * (factor - 1) / 2),
               shape=[int(n) for n in shape])
    return out


def degrade_image(array: np.ndarray, props: Mapping, degradation: Mapping) -> tuple[np.ndarray, dict]:
    """Apply a task's degradation to a canonical (X, Y, Z) array and its props; returns (lowres array, lowres props).

    Values are A(array) computed in float64 and returned in the array's floating dtype (float32 for integer
    input), the same convention as `avgpool_downsample`.
    """
    factor = _check(degradation)
    array = np.asarray(array)
    if array.ndim != 3 or list(array.shape) != [int(n) for n in props["shape"]]:
        raise ValueError(f"degrade_image: array of shape {array.shape} does not match props shape {props['shape']}.")
    return avgpool_downsample(array, factor), lowres_grid(props, factor)
