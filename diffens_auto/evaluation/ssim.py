"""Structural similarity of volumes with a Gaussian window (Wang et al. 2004), in 2D or 3D.

Settings follow Wang et al. and scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`: Gaussian weights of sigma 1.5 truncated at 3.5 sigma (an 11-voxel window per
axis), population (co)variances, K1 = 0.01, K2 = 0.03, borders extended by reflection. The mean of the SSIM map
leaves out the (window − 1) / 2 voxels next to every face, where the window reaches outside the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from diffens_auto.evaluation.metrics import check_data_range, reference_data_range, region_index

SIGMA = 1.5
TRUNCATE = 3.5
K1 = 0.01
K2 = 0.03


def window_size(sigma: float = SIGMA, truncate: float = TRUNCATE) -> int:
    """Side of the Gaussian window in voxels, 2·int(truncate·sigma + 0.5) + 1 (11 for sigma 1.5)."""
    # scipy's gaussian_filter cuts its kernel at this radius, so it is the window's true support.
    return 2 * int(truncate * sigma + 0.5) + 1


@dataclass(frozen=True)
class LocalMoments:
    """Gaussian-weighted local means, variances and covariance of two images (one value per voxel)."""
    mean_x: np.ndarray
    mean_y: np.ndarray
    var_x: np.ndarray
    var_y: np.ndarray
    cov_xy: np.ndarray
    window: int


def local_moments(reference: np.ndarray, prediction: np.ndarray, sigma: float = SIGMA,
                  truncate: float = TRUNCATE) -> LocalMoments:
    """Local statistics of reference (x) and prediction (y); every side must be at least the window size."""
    x, y = np.asarray(reference, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"arrays of different shapes {list(x.shape)} and {list(y.shape)} cannot be compared")
    window = window_size(sigma, truncate)
    if min(x.shape) < window:
        raise ValueError(f"SSIM needs every side to be at least the window size ({window} voxels for sigma "
                         f"{sigma}); the image is {list(x.shape)}")

    def smooth(a):
        return gaussian_filter(a, sigma=sigma, truncate=truncate, mode="reflect")

    mean_x, mean_y = smooth(x), smooth(y)
    # Population (co)variances E[xy] − E[x]E[y], as in Wang et al. 2004 (not the sample N/(N−1) version).
    return LocalMoments(mean_x, mean_y, smooth(x * x) - mean_x ** 2, smooth(y * y) - mean_y ** 2,
                        smooth(x * y) - mean_x * mean_y, window)


def ssim_map(moments: LocalMoments, data_range: float, k1: float = K1, k2: float = K2) -> np.ndarray:
    """The SSIM value of every voxel from local moments, with C1 = (k1·L)², C2 = (k2·L)², L the data range."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    m = moments
    # Wang et al. 2004, Eq. 13.
    return ((2 * m.mean_x * m.mean_y + c1) * (2 * m.cov_xy + c2)
            / ((m.mean_x ** 2 + m.mean_y ** 2 + c1) * (m.var_x + m.var_y + c2)))


def interior(shape: tuple[int, ...], window: int) -> np.ndarray:
    """Boolean mask of the voxels at least (window − 1) / 2 voxels away from every face."""
    pad = (window - 1) // 2
    inside = np.zeros(shape, dtype=bool)
    inside[tuple(slice(pad, n - pad) for n in shape)] = True
    return inside


def mean_ssim(moments: LocalMoments, data_range: float, mask: np.ndarray | None = None, k1: float = K1,
              k2: float = K2) -> float:
    """Mean of the SSIM map over the interior voxels inside `mask` (NaN if none, or for a data range ≤ 0)."""
    if not data_range > 0:  # C1 = C2 = 0 would make flat regions 0/0
        return float("nan")
    shape = moments.mean_x.shape
    region = interior(shape, moments.window)
    if mask is not None:
        region &= region_index(mask, shape)
    if not region.any():
        return float("nan")
    return float(np.mean(ssim_map(moments, data_range, k1, k2)[region], dtype=np.float64))


def ssim3d(reference: np.ndarray, prediction: np.ndarray, data_range: float | None = None,
           mask: np.ndarray | None = None, *, sigma: float = SIGMA, k1: float = K1, k2: float = K2) -> float:
    """Mean SSIM (Gaussian window sigma 1.5, K1 0.01, K2 0.03) of interior voxels in `mask`; L: ref max − min."""
    check_data_range(data_range)
    if data_range is None:
        data_range = reference_data_range(reference, mask)
    return mean_ssim(local_moments(reference, prediction, sigma), data_range, mask, k1, k2)
