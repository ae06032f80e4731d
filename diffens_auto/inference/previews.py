"""Preview PNGs: the three orthogonal planes of a case's input, output and uncertainty, for a quick visual check."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from diffens_auto.atomic import atomic_path

PLANES = (("sagittal", 0), ("coronal", 1), ("axial", 2))


def _centre(mask: np.ndarray) -> list[int]:
    """Centre of the non-zero region (the volume's centre when it is empty)."""
    if not mask.any():
        return [n // 2 for n in mask.shape]
    return [int(round(float(np.mean(axis)))) for axis in np.nonzero(mask)]


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One canonical RAS plane, rotated so that anterior/superior point up in the picture."""
    return np.rot90(np.take(volume, index, axis=axis))


def write_preview(path: str | Path, rows: Sequence[tuple[str, np.ndarray]], spacing: Sequence[float] | None = None,
                  title: str = "") -> Path:
    """Write a PNG grid: one row per (name, volume (X, Y, Z) canonical), columns sagittal, coronal, axial planes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = _centre(np.asarray(rows[0][1]) != 0)
    spacing = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (name, volume) in enumerate(rows):
        volume = np.asarray(volume, dtype=np.float32)
        nonzero = volume[volume != 0]
        low, high = (np.percentile(nonzero, [0.5, 99.5]) if nonzero.size else (0.0, 1.0))
        for c, (plane, axis) in enumerate(PLANES):
            others = [s for i, s in enumerate(spacing) if i != axis]
            # imshow's aspect is height/width per pixel: the rotated plane's rows run along the second remaining axis
            axes[r][c].imshow(_plane(volume, axis, centre[axis]), cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
                              aspect=others[1] / others[0])
            axes[r][c].set_axis_off()
            axes[r][c].set_title(f"{name}: {plane}", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)
    return path
