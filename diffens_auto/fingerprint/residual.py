"""The spread of an SR task's residual, target - up(A(target)), measured per case for the planner.

The SR experts predict the noise of that residual (tasks/conditioning.py), so its scale decides where the standard
noise schedule has signal: a residual of standard deviation 0.09 (the demo's FLAIR at 4x) has an SNR above 1 for
only the first ~2 % of the 1000 training steps. The planner turns these statistics into the task's residual_scale
(unit RMS) and its x0 clip bound (documentation/planning.md).

Measured on the case's bounding-box crop at its own spacing, in the units the target is normalised with for the
task ("degraded": the percentile-affine parameters of the block means' non-zero voxels, as preprocessing and
prediction compute them), over the voxels where the target or its interpolated low-resolution version is non-zero
(the foreground and the blocks around its surface, where the residual lives; elsewhere it is exactly 0).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from diffens_auto.intensity import params_from_lowres
from diffens_auto.operators import avgpool_downsample, upsample_to_grid

RESIDUAL_SAMPLES_PER_CASE = 10_000


def case_residual(channel: np.ndarray, factor: Sequence[int], percentiles: Sequence[float],
                  rng: np.random.Generator) -> dict:
    """{"sum_squares", "count", "abs_max", "samples"} of one target channel's normalised residual (float64)."""
    volume = np.asarray(channel, dtype=np.float64)
    lowres = avgpool_downsample(volume, factor)
    half_range = params_from_lowres(lowres, percentiles)["half_range"]
    up = upsample_to_grid(torch.from_numpy(lowres)[None, None], factor, volume.shape)[0, 0].numpy()
    region = (volume != 0) | (up != 0)
    residual = (volume - up)[region] / half_range       # the centre cancels: both terms carry the same offset
    take = rng.choice(residual.size, min(RESIDUAL_SAMPLES_PER_CASE, residual.size), replace=False)
    return {"sum_squares": float(np.square(residual).sum()), "count": int(residual.size),
            "abs_max": float(np.abs(residual).max(initial=0.0)), "samples": residual[np.sort(take)]}


def pooled_residual_statistics(per_case: Sequence[Mapping]) -> dict:
    """RMS over every measured voxel of every case, and percentiles of |residual| from the pooled samples."""
    count = sum(int(c["count"]) for c in per_case)
    samples = np.abs(np.concatenate([c["samples"] for c in per_case])) if per_case else np.zeros(0)
    if count == 0 or samples.size == 0:
        return {"rms": 0.0, "abs_percentile_99": 0.0, "abs_percentile_99_9": 0.0, "abs_max": 0.0, "num_voxels": 0}
    p99, p999 = np.percentile(samples, [99.0, 99.9])
    return {"rms": float(np.sqrt(sum(float(c["sum_squares"]) for c in per_case) / count)),
            "abs_percentile_99": float(p99), "abs_percentile_99_9": float(p999),
            "abs_max": float(max(float(c["abs_max"]) for c in per_case)), "num_voxels": int(count)}
