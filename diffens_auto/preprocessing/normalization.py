"""Percentile-affine intensity normalisation: x_norm = (x - center) / half_range, no clipping.

center = (p_lo + p_hi) / 2 and half_range = (p_hi - p_lo) / 2 of the foreground intensities, so the robust
foreground range [p_lo, p_hi] (plans["normalization"]["percentiles"], default 0.5 and 99.5) maps to [-1, 1].
A parameter set is a plain dict {"center": float, "half_range": float} so it lives in JSON properties as is.

Three parameter sets per channel (see case_normalization): "case" (this case's foreground at its original
resolution), "degraded" (per degradation of a task's target, from what prediction will have instead of the target:
for average pooling the block-averaged channel at the target spacing; for k-space undersampling a scale alone,
center 0 and half_range the upper percentile of the zero-filled image |A⁺ A x|, see `kspace_params`) and "dataset"
(the fingerprint's, copied from the plans).
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np
import torch

from diffens_auto.dataset.dataset_json import degradation_key
from diffens_auto.intensity import DEFAULT_PERCENTILES, params_from_lowres, params_from_values
from diffens_auto.operators import FileOrderKSpace, avgpool_downsample, kspace_fft_axes, kspace_mask

# the canonical order itself: training's zero-filled image is computed on the canonical case
_IDENTITY = {"permutation": [0, 1, 2], "flips": [False, False, False]}


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


def kspace_targets(plans: Mapping) -> dict[int, dict[str, dict]]:
    """Return {target channel: {degradation key: degradation}} for the plans' tasks with a kspace degradation."""
    out: dict[int, dict[str, dict]] = {}
    for task in plans.get("tasks", {}).values():
        degradation = task.get("degradation")
        if degradation and degradation.get("type") == "kspace":
            out.setdefault(int(task["target"]), {})[degradation_key(degradation)] = dict(degradation)
    return out


def kspace_case_seeds(case_id: str, seed: int = 0) -> tuple[int, int]:
    """The (mask, noise) seeds of one case under `seed`: the one derivation training and diffens_degrade share."""
    # SHA-256, not hash(): Python salts string hashes per process, which would change the masks run to run
    digest = int.from_bytes(hashlib.sha256(str(case_id).encode("utf-8")).digest(), "big")
    mask, noise = np.random.SeedSequence([int(seed), digest]).generate_state(2)
    return int(mask), int(noise)


def mask_seed(case_id: str, seed: int = 0) -> int:
    """The k-space mask seed of a case: preprocessing's (seed 0) is the seed `diffens_degrade` uses by default."""
    return kspace_case_seeds(case_id, seed)[0]


def zero_filled_params(zero_filled, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """{"center": 0, "half_range": the upper percentile of |zero_filled| over every voxel}: a k-space task's scale.

    `zero_filled` (numpy or torch, complex or real) is A⁺ A x of the target in training and A⁺ y of the
    measurement in prediction, so both take the scale the same way.
    """
    magnitude = np.abs(zero_filled.detach().cpu().numpy() if isinstance(zero_filled, torch.Tensor) else
                       np.asarray(zero_filled)).astype(np.float64).ravel()
    scale = float(np.percentile(magnitude, float(percentiles[-1]))) if magnitude.size else 0.0
    if not scale > 0:
        # a (nearly) empty image: its largest magnitude, or no scaling at all
        scale = float(magnitude.max(initial=0.0)) or 1.0
    # no offset: a constant added to the target would be a spike at the k-space centre (DC)
    return {"center": 0.0, "half_range": scale}


def kspace_params(channel: np.ndarray, degradation: Mapping, seed: int,
                  percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> dict:
    """The scale parameters of `channel` (raw canonical intensities) under a kspace degradation.

    `zero_filled_params` of A⁺ A x: the zero-filled image of the channel's own fully sampled k-space under the
    task's mask, drawn on the channel's grid from `seed`, with prediction's normalised operator (FileOrderKSpace)
    and without noise.
    """
    volume = torch.from_numpy(np.asarray(channel, dtype=np.float64))
    axes = kspace_fft_axes(degradation)
    operator = FileOrderKSpace.from_canonical_mask(_IDENTITY, kspace_mask(degradation, volume.shape, seed=seed), axes)
    return zero_filled_params(operator.pinv(operator.A(volume)), percentiles)


def case_normalization(original: np.ndarray, original_mask: np.ndarray, resampled: np.ndarray,
                       plans: Mapping, channels: Sequence[int] | None = None, *, case_id: str = "") -> dict[str, dict]:
    """Return per channel {"case": params, "degraded": {key: params}[, "dataset": params]} of one case.

    "case" comes from the foreground voxels of `original` (C, X, Y, Z), the cropped raw image at its own
    resolution, as the fingerprint's (and so the "dataset") statistics do: resampling adds partial-volume and
    spline-ringing voxels at the surface that would pull the low percentile down. "degraded" comes from
    `resampled` (C, X', Y', Z'), raw intensities at the target spacing and 0 outside the foreground, because the
    degradation operator acts on that grid: its block averages (avgpool), or its zero-filled image under the
    k-space mask seeded by `mask_seed(case_id)` (kspace). `channels` are the dataset channel numbers of the rows
    (default 0..C-1).
    """
    settings = plans.get("normalization", {})
    percentiles = settings.get("percentiles", DEFAULT_PERCENTILES)
    dataset_params = settings.get("dataset", {})
    degraded, kspace = degraded_targets(plans), kspace_targets(plans)
    original_mask = np.asarray(original_mask, dtype=bool)
    channels = range(original.shape[0]) if channels is None else [int(c) for c in channels]
    out = {}
    for row, c in enumerate(channels):
        entry = {"case": params_from_values(original[row][original_mask], percentiles),
                 "degraded": {key: degraded_params(resampled[row], factor, percentiles)
                              for key, factor in degraded.get(c, {}).items()}}
        entry["degraded"].update({key: kspace_params(resampled[row], degradation, mask_seed(case_id), percentiles)
                                  for key, degradation in kspace.get(c, {}).items()})
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
