"""Maximum mean discrepancy (Gretton et al. 2012) between reference and predicted volumes, on 3D patches.

The kernel is Gaussian, k(a, b) = exp(−‖a − b‖² / (2σ²)), with σ from the median heuristic (as in Gretton et
al.'s experiments): the median Euclidean distance between distinct points of the pooled sample. Patches are drawn
at seeded random positions in each case's foreground, the same positions in the reference and the prediction,
so the patches come in pairs and the paired unbiased estimator applies.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np


def _as_samples(points) -> np.ndarray:
    """Points as rows of a float64 matrix; a 1D array is that many scalars."""
    points = np.asarray(points, np.float64)
    return points[:, None] if points.ndim == 1 else points


def pairwise_squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix of ‖a_i − b_j‖² between the rows of a (m, d) and b (n, d), in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    # The expansion can round a true zero to a tiny negative number.
    return np.maximum(squared, 0.0)


def median_heuristic_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """σ = median of ‖z_i − z_j‖ over pairs i < j of the pooled z = x ∪ y (if 0: mean positive distance)."""
    pooled = np.concatenate([_as_samples(x), _as_samples(y)])
    upper = np.triu_indices(len(pooled), k=1)
    distances = np.sqrt(pairwise_squared_distances(pooled, pooled)[upper])
    sigma = float(np.median(distances)) if distances.size else 0.0
    if sigma > 0:
        return sigma
    # More than half the pairs coincide; the positive distances still set a scale. All equal: any σ gives MMD² 0.
    positive = distances[distances > 0]
    return float(positive.mean()) if positive.size else 1.0


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None, paired: bool = False) -> float:
    """Unbiased MMD² of samples x (m, d), y (n, d); Gaussian kernel, σ by median heuristic if None; see `paired`.

    paired=False: Gretton et al. 2012, Eq. 3 (independent samples, any m, n). paired=True (m = n, x_i and y_i
    drawn together, e.g. at one patch position): Lemma 6, whose cross term leaves out the matched k(x_i, y_i), so
    it stays unbiased however alike the pairs are, and is exactly 0 for y = x.
    """
    x, y = _as_samples(x), _as_samples(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples of different dimensions {x.shape[1]} and {y.shape[1]} cannot be compared")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 points in each sample, got {m} and {n}")
    if paired and m != n:
        raise ValueError(f"paired samples need as many points in x as in y, got {m} and {n}")
    sigma = median_heuristic_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth {bandwidth}: give a positive number or None for the median heuristic")

    def kernel(a, b):
        return np.exp(-pairwise_squared_distances(a, b) / (2 * sigma ** 2))

    def off_diagonal_mean(k):
        return (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))

    k_xy = kernel(x, y)
    # Gretton et al. 2012: Eq. 3 averages the cross term over all (i, j); Lemma 6 over i != j only.
    cross = off_diagonal_mean(k_xy) if paired else k_xy.mean()
    return float(off_diagonal_mean(kernel(x, x)) + off_diagonal_mean(kernel(y, y)) - 2 * cross)


def case_rng(case: str, seed: int) -> np.random.Generator:
    """A generator that depends only on the case name and the seed, so results do not depend on case order."""
    return np.random.default_rng([seed, zlib.crc32(case.encode("utf-8"))])


def sample_patch_corners(foreground: np.ndarray, patch_size: Sequence[int], count: int,
                         rng: np.random.Generator) -> np.ndarray | None:
    """`count` lower corners (count, ndim) of patches centred on random foreground voxels, shifted inside the image.

    Without foreground voxels every voxel may be a centre; None if the image is smaller than a patch.
    """
    shape, size = np.array(foreground.shape), np.array(patch_size)
    if np.any(shape < size):
        return None
    centres = np.argwhere(foreground)
    if len(centres) == 0:
        centres = np.argwhere(np.ones(foreground.shape, dtype=bool))
    chosen = centres[rng.integers(0, len(centres), size=count)]
    return np.clip(chosen - size // 2, 0, shape - size)


def extract_patches(volume: np.ndarray, corners: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """The patches of `volume` at `corners`, flattened to rows (count, prod(patch_size)) of float32."""
    return np.stack([volume[tuple(slice(c, c + s) for c, s in zip(corner, patch_size))].astype(np.float32).ravel()
                     for corner in corners])
