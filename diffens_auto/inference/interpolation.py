"""The interpolation floor of super-resolution (paper Table 1's baselines): trilinear up(lr) on the SR output grid.

The same grid, the same block-centre trilinear interpolation and the same background as the diffusion models'
condition and outputs (`operators.upsample_to_grid`, `operators.highres_grid`; 0 outside the blocks whose input
is non-zero), without any learned prior: the plain interpolation a reader compares against. With `project=True`
the exact consistency projection follows (x - A⁺(A x - y), in float64, as every diffusion output gets it): the
fair floor of a diffusion method, which is also what an SR model that predicts a zero residual would output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffens_auto.imageio import read_image, write_image
from diffens_auto.operators import highres_grid, operator_for, upsample_to_grid


def trilinear_upsample(lowres: np.ndarray, props: dict, degradation: dict,
                       project: bool = False) -> tuple[np.ndarray, dict]:
    """(float32 up(lowres) (projected onto A x = lowres with `project`), high-resolution grid) of a low-res image."""
    operator = operator_for(degradation)
    grid = highres_grid(props, operator.factor)
    lowres = torch.from_numpy(np.asarray(lowres, np.float32))[None, None]
    up = upsample_to_grid(lowres, operator.factor, grid["shape"])
    keep = operator.pinv((lowres != 0).float(), grid["shape"]) > 0
    up = up * keep
    if project:
        # blocks outside `keep` have input 0 and hold 0 already, so the projection leaves the background alone
        up = operator.project(up.double(), lowres.double()).float()
    return up[0, 0].numpy(), grid


def trilinear_folder(input_files: dict[str, Path], output_folder: str | Path, degradation: dict,
                     file_ending: str = ".nii.gz", *, project: bool = False) -> list[Path]:
    """Write up(lr) (projected with `project`) of each {case: low-resolution file} as output_folder/CASE<ending>."""
    written = []
    for case, path in sorted(input_files.items()):
        array, props = read_image(path)
        up, grid = trilinear_upsample(array, props, degradation, project)
        target = Path(output_folder) / f"{case}{file_ending}"
        write_image(up, grid, target)
        written.append(target)
    return written
