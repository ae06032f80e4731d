"""Geometry of canonical arrays: reorientation to the closest RAS axes, voxel-to-world maps, comparisons.

All functions work on plain numbers and props dicts (see `diffens_auto.imageio`); world coordinates are
ITK/LPS millimetres, and the physical position of index i is origin + direction @ (spacing * i).
"""
import copy
from typing import Sequence

import numpy as np
from nibabel.orientations import io_orientation

# LPS <-> RAS is a sign change of the first two world axes; the matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def canonical_reorientation(spacing: Sequence[float], direction: np.ndarray) -> dict:
    """Permutation and flips taking file axes to the closest canonical RAS axes (canonical j = file permutation[j])."""
    ras_affine = np.eye(4)
    ras_affine[:3, :3] = LPS_TO_RAS @ np.asarray(direction, float) @ np.diag(spacing)
    permutation, flips = [0, 0, 0], [False, False, False]
    # io_orientation picks one world axis per file axis even for oblique or sheared matrices.
    for file_axis, (ras_axis, sign) in enumerate(io_orientation(ras_affine)):
        permutation[int(ras_axis)] = file_axis
        flips[int(ras_axis)] = bool(sign < 0)
    return {"permutation": permutation, "flips": flips}


def _flip_geometry(shape, spacing, origin, direction, flips):
    """Geometry after reversing the flipped axes: the origin moves to the far voxel, the column turns round."""
    origin, direction = np.array(origin, float), np.array(direction, float)
    for axis in np.flatnonzero(flips):
        origin = origin + direction[:, axis] * spacing[axis] * (shape[axis] - 1)
        direction[:, axis] *= -1
    return origin, direction


def to_canonical(file_array: np.ndarray, spacing, origin, direction, reorientation: dict):
    """Permute and flip a file-ordered (i, j, k) array and its geometry into canonical order."""
    permutation, flips = reorientation["permutation"], reorientation["flips"]
    array = np.transpose(file_array, permutation)
    spacing = np.asarray(spacing, float)[permutation]
    direction = np.asarray(direction, float)[:, permutation]
    origin, direction = _flip_geometry(array.shape, spacing, origin, direction, flips)
    array = np.flip(array, axis=tuple(int(a) for a in np.flatnonzero(flips)))
    return np.ascontiguousarray(array), spacing, origin, direction


def to_file_order(array: np.ndarray, spacing, origin, direction, reorientation: dict):
    """Undo `to_canonical`, using the array's own shape for the flips (it may differ from the file's)."""
    permutation, flips = reorientation["permutation"], reorientation["flips"]
    spacing = np.asarray(spacing, float)
    origin, direction = _flip_geometry(array.shape, spacing, origin, direction, flips)
    array = np.flip(array, axis=tuple(int(a) for a in np.flatnonzero(flips)))
    inverse = np.argsort(permutation)
    return np.transpose(array, inverse), spacing[inverse], origin, direction[:, inverse]


def make_props(shape, spacing, origin, direction, *, reorientation: dict, io: dict) -> dict:
    """Assemble a JSON-serialisable props dict (plain lists, floats and ints)."""
    return {
        "spacing": [float(s) for s in spacing],
        "origin": [float(o) for o in origin],
        "direction": [[float(v) for v in row] for row in np.asarray(direction, float)],
        "shape": [int(n) for n in shape],
        "reorientation": {"permutation": [int(p) for p in reorientation["permutation"]],
                          "flips": [bool(f) for f in reorientation["flips"]]},
        "io": dict(io),
    }


def index_to_world(props: dict, index) -> np.ndarray:
    """World (LPS, mm) position of canonical index i, shape (3,) or (N, 3): origin + direction @ (spacing * i)."""
    index = np.asarray(index, float)
    scaled = index * np.asarray(props["spacing"], float)
    return np.asarray(props["origin"], float) + scaled @ np.asarray(props["direction"], float).T


def crop_geometry(props: dict, lower_corner: Sequence[int], shape: Sequence[int] | None = None) -> dict:
    """Props of a crop starting at canonical voxel `lower_corner`; shape defaults to reaching the far corner."""
    cropped = copy.deepcopy(props)
    cropped["origin"] = [float(v) for v in index_to_world(props, lower_corner)]
    if shape is None:
        shape = np.asarray(props["shape"]) - np.asarray(lower_corner)
    cropped["shape"] = [int(n) for n in shape]
    return cropped


def with_spacing(props: dict, new_spacing: Sequence[float], new_shape: Sequence[int]) -> dict:
    """Props of the same field of view resampled to `new_spacing` on `new_shape` (outer voxel edges kept in place)."""
    old, new = np.asarray(props["spacing"], float), np.asarray(new_spacing, float)
    resampled = copy.deepcopy(props)
    # Edge alignment: voxel 0's centre sits half a new voxel inside the old field of view's corner.
    origin = np.asarray(props["origin"], float) + np.asarray(props["direction"], float) @ ((new - old) / 2)
    resampled.update(spacing=[float(s) for s in new], origin=[float(o) for o in origin],
                     shape=[int(n) for n in new_shape])
    return resampled


def check_same_geometry(props_a: dict, props_b: dict, spacing_tol: float = 1e-4, origin_tol: float = 1e-4,
                        direction_tol: float = 1e-6) -> list[str]:
    """Human-readable differences in shape, spacing, origin and direction of two props (empty list = same grid)."""
    problems = []
    if list(props_a["shape"]) != list(props_b["shape"]):
        problems.append(f"shape {list(props_a['shape'])} vs {list(props_b['shape'])}")
    tolerances = (("spacing", spacing_tol, " mm"), ("origin", origin_tol, " mm"), ("direction", direction_tol, ""))
    for key, tol, unit in tolerances:
        a, b = np.asarray(props_a[key], float), np.asarray(props_b[key], float)
        difference = float(np.max(np.abs(a - b)))
        if difference > tol:
            problems.append(f"{key} {np.round(a, 6).tolist()} vs {np.round(b, 6).tolist()} "
                            f"(differs by up to {difference:.3g}{unit}, tolerance {tol:g}{unit})")
    return problems
