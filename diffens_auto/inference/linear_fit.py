"""The floor of modality translation: the inputs mapped to the target by a linear intensity fit on training cases.

For a task without a degradation (mt: T1ce -> FLAIR) the floor is target ~ sum_i w_i input_i + c, fitted by least
squares over the training cases' voxels where every input is non-zero, and applied to a case's inputs there (0
elsewhere, like a model's output). For a task with a degradation too (both: T1ce and the low-resolution FLAIR)
the interpolated measurement up(lr) (`interpolation.trilinear_upsample`, as prediction makes it) is one more
regressor, and with `project=True` the exact consistency projection onto A x = lr follows, so the floor is the
best a linear map of what the model is given can do before any learned prior. A fit is a plain dict (JSON).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference.interpolation import trilinear_upsample
from diffens_auto.operators import degrade_image, operator_for


def _on_grid(array: np.ndarray, shape) -> np.ndarray:
    """The array on the high-resolution grid of the blocks, which starts at voxel 0 and covers a partial last
    block whole: zero-padded (or cut) at the far end to `shape`."""
    array = np.asarray(array)[tuple(slice(0, int(n)) for n in shape)]
    return np.pad(array, [(0, int(n) - m) for n, m in zip(shape, array.shape)])


def _regressors(inputs: list[np.ndarray], up: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(design matrix of the voxels where every input is non-zero, that mask)."""
    if up is not None:
        inputs = [_on_grid(a, up.shape) for a in inputs]
    mask = np.all([a != 0 for a in inputs], axis=0) if inputs else up != 0
    columns = [a[mask].astype(np.float64) for a in inputs]
    if up is not None:
        columns.append(up[mask].astype(np.float64))
    columns.append(np.ones(int(mask.sum())))
    return np.stack(columns, axis=1), mask


def fit_linear_map(cases: list[Mapping[int, Path]], target: int, inputs: list[int],
                   degradation: Mapping | None = None) -> dict:
    """Least-squares weights of target ~ inputs (+ up(A target) with a degradation) + 1 over the training cases."""
    rows, values = [], []
    for files in cases:
        images = {c: read_image(files[c]) for c in [*inputs, target]}
        up = None
        if degradation:
            lowres, lowres_props = degrade_image(*images[target], degradation)
            up, _ = trilinear_upsample(lowres, lowres_props, degradation)
        design, mask = _regressors([images[c][0] for c in inputs], up)
        rows.append(design)
        values.append(_on_grid(images[target][0], mask.shape)[mask].astype(np.float64))
    weights, *_ = np.linalg.lstsq(np.concatenate(rows), np.concatenate(values), rcond=None)
    names = [f"channel {c}" for c in inputs] + (["up(A target)"] if degradation else []) + ["offset"]
    return {"target": int(target), "inputs": [int(c) for c in inputs], "degradation": dict(degradation or {}),
            "weights": dict(zip(names, (float(w) for w in weights)))}


def apply_linear_map(fit: Mapping, arrays: Mapping[int, np.ndarray], props: Mapping[int, dict], *,
                     project: bool = False) -> tuple[np.ndarray, dict]:
    """(float32 floor, its grid) of one case: the fit on its inputs (and up(lr)), projected onto lr with `project`."""
    inputs, degradation = fit["inputs"], fit["degradation"] or None
    up, grid = None, props[inputs[0]] if inputs else None
    if degradation:
        up, grid = trilinear_upsample(arrays[fit["target"]], props[fit["target"]], degradation)
    design, mask = _regressors([np.asarray(arrays[c]) for c in inputs], up)
    output = np.zeros(mask.shape, np.float64)
    output[mask] = design @ np.array(list(fit["weights"].values()))
    if degradation and project:
        operator = operator_for(degradation)
        lowres = torch.from_numpy(np.asarray(arrays[fit["target"]], np.float64))[None, None]
        output = operator.project(torch.from_numpy(output)[None, None], lowres)[0, 0].numpy()
    return output.astype(np.float32), grid


def linear_map_folder(cases: Mapping[str, Mapping[int, Path]], output_folder: str | Path, fit: Mapping,
                      file_ending: str = ".nii.gz", *, project: bool = False) -> list[Path]:
    """Write the linear-fit floor of each {case: {channel: file}} as output_folder/CASE<ending>."""
    written = []
    for case, files in sorted(cases.items()):
        arrays, props = {}, {}
        for channel, path in files.items():
            arrays[channel], props[channel] = read_image(path)
        output, grid = apply_linear_map(fit, arrays, props, project=project)
        path = Path(output_folder) / f"{case}{file_ending}"
        write_image(output, grid, path)
        written.append(path)
    return written
