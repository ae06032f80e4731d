"""Percentile-affine parameters {"center", "half_range"} of intensities; numpy only, so every stage can use them.

center = (p_lo + p_hi) / 2 and half_range = (p_hi - p_lo) / 2 of the values, so the robust range [p_lo, p_hi] maps
to [-1, 1] (preprocessing/normalization.py applies them; the fingerprint measures an SR residual in those units).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_PERCENTILES = (0.5, 99.5)
# half_range below this fraction of the intensities' magnitude counts as a constant foreground.
_RELATIVE_FLAT = 1e-6


def params_from_values(values: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """Return {"center", "half_range"} of the `percentiles` of `values`; guarded for constant or empty input."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return {"center": 0.0, "half_range": 1.0}
    lo, hi = np.percentile(values, [float(p) for p in percentiles])
    center, half_range = 0.5 * (lo + hi), 0.5 * (hi - lo)
    if not half_range > _RELATIVE_FLAT * max(abs(lo), abs(hi)):
        # A flat foreground: map it to 0 and the (zero) background to -1 (or +1 for negative values); if the
        # foreground is 0 too, leave the scale alone.
        half_range = abs(center) if center != 0 else 1.0
    return {"center": float(center), "half_range": float(half_range)}


def params_from_lowres(lowres: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """Return the parameters of a low-resolution (degraded) channel from its non-zero voxels alone."""
    lowres = np.asarray(lowres)
    return params_from_values(lowres[lowres != 0], percentiles)
