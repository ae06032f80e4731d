"""Cartesian k-space undersampling masks (centred: the k-space centre, DC, sits at index n // 2 of each axis).

The masks follow `KSpaceUndersampling`'s fftshift convention, so the autocalibration (ACS) region is the block
around index n // 2. Both generators are deterministic by `seed` (numpy's default_rng) and return torch.bool tensors.

- `uniform_1d_mask`: whole lines along one phase-encode axis; round(n / acceleration) lines in all (never fewer
  than the ACS lines), the ACS lines plus the rest drawn uniformly at random without replacement from the other
  lines (`pattern="random"`, as DDS's "uniform1d") or evenly spread with a random offset (`"equispaced"`). The
  achieved acceleration n / lines is therefore exact up to rounding the line count.
- `poisson_disc_mask`: variable-density Poisson-disc in a 2D phase-encode plane (the scheme of sigpy.mri.poisson):
  the exclusion radius grows linearly with the normalised distance r from the ACS box, radius = max(1, (1 + r ·
  slope) · n_axis / max(ny, nx)) per axis (1 voxel at the centre, i.e. fully sampled there), samples outside the
  inscribed ellipse r ≥ 1 dropped (`crop_corner`). The slope is found by bisection until the achieved
  acceleration (all voxels / sampled voxels) is within `tol` (relative, default 2 %) of the request; when no slope
  gets there (an acceleration below ~1.3 with crop_corner, or above what the ACS box allows) the closest mask
  found in `max_iterations` bisection steps is returned. Use `achieved_acceleration` to read what a mask gives.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def achieved_acceleration(mask) -> float:
    """Number of k-space points over the number sampled (inf for an empty mask)."""
    mask = torch.as_tensor(mask)
    sampled = int(mask.count_nonzero())
    return float("inf") if sampled == 0 else mask.numel() / sampled


def _centred_range(n: int, width: int) -> np.ndarray:
    """Indices of `width` consecutive lines centred on the DC index n // 2."""
    start = n // 2 - width // 2
    return np.arange(max(start, 0), min(start + width, n))


def uniform_1d_mask(shape: Sequence[int], acceleration: float, acs_lines: int = 24, *, axis: int = -1,
                    seed: int = 0, pattern: str = "random") -> torch.Tensor:
    """Cartesian line mask of `shape`: lines along `axis` (phase encode), ACS lines at the centre, the rest random."""
    shape = tuple(int(n) for n in shape)
    axis = axis % len(shape)
    n = shape[axis]
    if acceleration < 1 or not 0 <= acs_lines <= n:
        raise ValueError(f"uniform_1d_mask: need acceleration >= 1 and 0 <= acs_lines <= {n}, "
                         f"got {acceleration} and {acs_lines}.")
    rng = np.random.default_rng(seed)
    acs = _centred_range(n, int(acs_lines))
    others = np.setdiff1d(np.arange(n), acs)
    remaining = min(max(int(round(n / acceleration)) - len(acs), 0), len(others))
    if pattern == "random":
        chosen = rng.choice(others, size=remaining, replace=False)
    elif pattern == "equispaced":
        # Evenly spread over the non-ACS lines, shifted by one random offset.
        positions = np.floor((np.arange(remaining) + rng.uniform()) * len(others) / max(remaining, 1))
        chosen = others[positions.astype(int)]
    else:
        raise ValueError(f"uniform_1d_mask: pattern must be 'random' or 'equispaced', got {pattern!r}.")
    lines = np.zeros(n, dtype=bool)
    lines[acs] = True
    lines[chosen] = True
    view = [1] * len(shape)
    view[axis] = n
    return torch.from_numpy(np.broadcast_to(lines.reshape(view), shape).copy())


def _normalised_radius(shape, acs) -> np.ndarray:
    """Distance from the ACS box, each axis scaled so the farthest point is 1 (sigpy.mri.poisson's r)."""
    grids = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    r2 = np.zeros(shape)
    for grid, n, a in zip(grids, shape, acs):
        d = np.maximum(np.abs(grid - n / 2) - a / 2, 0)
        r2 += (d / max(d.max(), 1e-12)) ** 2
    return np.sqrt(r2)


def _poisson_pattern(order: np.ndarray, radius_y: np.ndarray, radius_x: np.ndarray) -> np.ndarray:
    """Sequential dart throwing on the grid in a fixed random order; each sample excludes its own ellipse."""
    ny, nx = radius_y.shape
    mask = np.zeros((ny, nx), dtype=bool)
    blocked = np.zeros((ny, nx), dtype=bool)
    blocked_flat = blocked.reshape(-1)
    for index in order:
        if blocked_flat[index]:
            continue
        iy, ix = divmod(int(index), nx)
        mask[iy, ix] = True
        ry, rx = radius_y[iy, ix], radius_x[iy, ix]
        hy, hx = int(np.ceil(ry)), int(np.ceil(rx))
        y0, y1, x0, x1 = max(iy - hy, 0), min(iy + hy + 1, ny), max(ix - hx, 0), min(ix + hx + 1, nx)
        dy = (np.arange(y0, y1) - iy)[:, None] / ry
        dx = (np.arange(x0, x1) - ix)[None, :] / rx
        blocked[y0:y1, x0:x1] |= dy ** 2 + dx ** 2 < 1
    return mask


def poisson_disc_mask(shape: Sequence[int], acceleration: float, acs: int | Sequence[int] = 24, *, seed: int = 0,
                      crop_corner: bool = True, tol: float = 0.02, max_iterations: int = 30) -> torch.Tensor:
    """Variable-density Poisson-disc mask of a 2D phase-encode plane (ny, nx); ACS box fully sampled at the centre."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2 or acceleration < 1:
        raise ValueError(f"poisson_disc_mask: need a 2D shape and acceleration >= 1, got {shape}, {acceleration}.")
    acs = (int(acs),) * 2 if isinstance(acs, (int, np.integer)) else tuple(int(a) for a in acs)
    ny, nx = shape
    r = _normalised_radius(shape, acs)
    acs_box = np.zeros(shape, dtype=bool)
    acs_box[np.ix_(_centred_range(ny, acs[0]), _centred_range(nx, acs[1]))] = True
    # One visiting order for every slope, so the achieved acceleration grows (nearly) monotonically with the slope.
    order = np.random.default_rng(seed).permutation(ny * nx)
    low, high = 0.0, float(max(shape))
    best, best_error = None, np.inf
    for _ in range(max_iterations):
        slope = (low + high) / 2
        scale = 1 + r * slope
        mask = _poisson_pattern(order, np.maximum(scale * ny / max(shape), 1), np.maximum(scale * nx / max(shape), 1))
        if crop_corner:
            mask &= r < 1
        mask |= acs_box
        achieved = mask.size / mask.sum()
        error = abs(achieved / acceleration - 1)
        if error < best_error:
            best, best_error = mask, error
        if error <= tol:
            break
        if achieved < acceleration:
            low = slope
        else:
            high = slope
    return torch.from_numpy(best)
