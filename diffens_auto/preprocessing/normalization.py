"""Percentile-affine intensity normalisation: x_norm = (x - center) / half_range, no clipping.

center = (p_lo + p_hi) / 2 and half_range = (p_hi - p_lo) / 2 of the foreground intensities, so the robust
foreground range [p_lo, p_hi] (plans["normalization"]["percentiles"], default 0.5 and 99.5) maps to [-1, 1].
A parameter set is a plain dict {"center": float, "half_range": float} so it lives in JSON properties as is.

Three parameter sets per channel (see case_normalization): "case" (this case's foreground at its original
resolution), "degraded" (per avgpool degradation of a task's target: from the block-averaged channel at the target
spacing alone, because at prediction time only the low-resolution image exists) and "dataset" (the fingerprint's,
copied from the plans).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from diffens_auto.dataset.dataset_json import degradation_key
from diffens_auto.intensity import DEFAULT_PERCENTILES, params_from_lowres, params_from_values
from diffens_auto.operators import avgpool_downsample


def normalize(x: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """Return (x - center) / half_range as float32 (computed in float64)."""
    return ((np.asarray(x, dtype=np.float64) - params["center"]) / params["half_range"]).astype(np.float32)


def denormalize(x: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """Return x * half_range + center as float32 (computed in float64), the inverse of `normalize`."""
    return (np.asarray(x, dtype=np.float64) * params["half_range"] + params["center"]).astype(np.float32)


def renormalize(x, from_params: Mapping[str, float], to_params: Mapping[str, float]):
    """Re-express `x`, normalised with `from_params`, as normalised with `to_params` (numpy array or torch tensor).

    One affine map x * a + b with a, b computed in float64, so the only rounding is that of x's own dtype.
    """
    scale = float(from_params["half_range"]) / float(to_params["half_range"])
    shift = (float(from_params["center"]) - float(to_params["center"])) / float(to_params["half_range"])
    return x * scale + shift


def degraded_params(channel: np.ndarray, factor: Sequence[int],
                    percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """Return the parameters of `channel` (raw intensities, background 0) after avgpool degradation by `factor`."""
    return params_from_lowres(avgpool_downsample(np.asarray(channel, dtype=np.float64), factor), percentiles)


def degraded_targets(plans: Mapping) -> dict[int, dict[str, list[int]]]:
    """Return {target channel: {degradation key: factor}} for the plans' tasks with an avgpool degradation."""
    out: dict[int, dict[str, list[int]]] = {}
    for task in plans.get("tasks", {}).values():
        degradation = task.get("degradation")
        if degradation and degradation.get("type") == "avgpool":
            out.setdefault(int(task["target"]), {})[degradation_key(degradation)] = \
                [int(f) for f in degradation["factor"]]
    return out


def case_normalization(original: np.ndarray, original_mask: np.ndarray, resampled: np.ndarray,
                       plans: Mapping, channels: Sequence[int] | None = None) -> dict[str, dict]:
    """Return per channel {"case": params, "degraded": {key: params}[, "dataset": params]} of one case.

    "case" comes from the foreground voxels of `original` (C, X, Y, Z), the cropped raw image at its own
    resolution, as the fingerprint's (and so the "dataset") statistics do: resampling adds partial-volume and
    spline-ringing voxels at the surface that would pull the low percentile down. "degraded" comes from the
    block averages of `resampled` (C, X', Y', Z'), raw intensities at the target spacing and 0 outside the
    foreground, because the degradation operator acts on that grid. `channels` are the dataset channel numbers
    of the rows (default 0..C-1).
    """
    settings = plans.get("normalization", {})
    percentiles = settings.get("percentiles", DEFAULT_PERCENTILES)
    dataset_params = settings.get("dataset", {})
    degraded = degraded_targets(plans)
    original_mask = np.asarray(original_mask, dtype=bool)
    channels = range(original.shape[0]) if channels is None else [int(c) for c in channels]
    out = {}
    for row, c in enumerate(channels):
        entry = {"case": params_from_values(original[row][original_mask], percentiles),
                 "degraded": {key: degraded_params(resampled[row], factor, percentiles)
                              for key, factor in degraded.get(c, {}).items()}}
        if str(c) in dataset_params:
            entry["dataset"] = {k: float(dataset_params[str(c)][k]) for k in ("center", "half_range")}
        out[str(c)] = entry
    return out


def select_params(channel_normalization: Mapping, which) -> dict:
    """Pick one parameter set of a channel's normalization entry in the properties.

    `which`: "case", "dataset", "degraded:<key>" (e.g. "degraded:avgpool_4x4x4"), "degraded" (when there is only
    one) or an explicit {"center", "half_range"} dict.
    """
    if isinstance(which, Mapping):
        return {"center": float(which["center"]), "half_range": float(which["half_range"])}
    kind, _, key = str(which).partition(":")
    if kind in ("case", "dataset") and not key and kind in channel_normalization:
        return dict(channel_normalization[kind])
    if kind == "degraded":
        available = channel_normalization.get("degraded", {})
        if not key and len(available) == 1:
            key = next(iter(available))
        if key in available:
            return dict(available[key])
    options = [k for k in ("case", "dataset") if k in channel_normalization]
    options += [f"degraded:{k}" for k in channel_normalization.get("degraded", {})]
    raise KeyError(f"normalization {which!r} is not stored for this channel; available: {options} or an explicit "
                   "{'center': ..., 'half_range': ...} dict.")
