"""Task conditioning shared by training, prediction and validation: what the networks see and what they predict.

A task (plans["tasks"][name]) has a target channel, input channels and optionally a degradation of the target:

    condition = [inputs..., up(A(target))]      channel order = plans condition_channels (inputs, then degraded)
    y0        = target                          "epsilon_target"   (noise predicted on the target)
              = (target - up(A(target))) / 2    "epsilon_residual" (public code: noise on the SR residual)

A is the task's degradation operator (`operators.operator_for`, the AvgPoolSR of `degrade_image`); up() brings the
low-resolution volume back to the target grid with trilinear interpolation whose low-resolution voxel centres sit
at the high-resolution block centres (the `lowres_grid` geometry). Volumes are renormalised for the task first
(`task_volumes`): the target with the plans' `target_normalization`, the inputs with `input_normalization`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffens_auto.operators import operator_for
from diffens_auto.preprocessing.normalization import renormalize, select_params

PARAMETRIZATIONS = ("epsilon_target", "epsilon_residual")


def _target_params(properties: Mapping, plans: Mapping, task_plans: Mapping) -> dict:
    """The parameter set of the task's target: the plans' dataset set, or one stored in the case's properties."""
    channel = str(task_plans["target"])
    which = task_plans["target_normalization"]
    if which == "dataset":
        return select_params({}, plans["normalization"]["dataset"][channel])
    return select_params(properties["normalization"][channel], which)


def task_normalization(properties: Mapping, plans: Mapping, task: str) -> list[tuple[dict, dict]]:
    """(stored, task) parameter sets of the target, then of each input: what `task_volumes` maps between.

    Stored = the channel's "case" set (what preprocessing wrote); task = the plans' target_normalization for the
    target ("dataset" -> plans["normalization"]["dataset"], "degraded:KEY" -> the case's degraded set) and
    input_normalization for the inputs.
    """
    task_plans = plans["tasks"][task]
    entries = properties["normalization"]
    target = str(task_plans["target"])
    pairs = [(select_params(entries[target], "case"), _target_params(properties, plans, task_plans))]
    for channel in task_plans["inputs"]:
        entry = entries[str(channel)]
        which = task_plans.get("input_normalization", "case")
        pairs.append((select_params(entry, "case"), select_params(entry, which)))
    return pairs


def task_background(properties: Mapping, plans: Mapping, task: str) -> np.ndarray:
    """Background value (the normalised value of intensity 0) of the target, then each input, in the task's scales.

    Preprocessing zeroes everything outside the foreground before normalising, so this is the value outside the
    mask, and the value to pad with.
    """
    return np.array([-to["center"] / to["half_range"] for _, to in task_normalization(properties, plans, task)],
                    dtype=np.float32)


def task_volumes(data, properties: Mapping, plans: Mapping, task: str):
    """(target (1, X, Y, Z), inputs (n_in, X, Y, Z)) of a preprocessed case, renormalised for `task`.

    `data` is a case's (C, X, Y, Z) array as `storage.load_case` returns it (numpy, a memory-mapped blosc2 array:
    only the task's channels are read) or a torch tensor; numpy comes back as float32 numpy.
    """
    task_plans = plans["tasks"][task]
    channels = [int(task_plans["target"])] + [int(c) for c in task_plans["inputs"]]
    pairs = task_normalization(properties, plans, task)
    if isinstance(data, torch.Tensor):
        stacked = torch.stack([renormalize(data[c], *pair) for c, pair in zip(channels, pairs)])
    else:
        volumes = [renormalize(np.asarray(data[c], dtype=np.float32), *pair) for c, pair in zip(channels, pairs)]
        stacked = np.stack(volumes).astype(np.float32, copy=False)
    return stacked[:1], stacked[1:]


def upsample_to_grid(lowres: torch.Tensor, factor: Sequence[int], hr_shape: Sequence[int]) -> torch.Tensor:
    """(B, C, x, y, z) -> (B, C, X, Y, Z): trilinear, align_corners=False, low-res voxel i at the centre of block i.

    Interpolating to exactly (x, y, z) * factor puts low-resolution voxel i at high-resolution coordinate
    f * i + (f - 1) / 2, the centre of the block it averages (`operators.lowres_grid`); the result is then
    cropped (a partial last block) or edge-padded to `hr_shape`.
    """
    factor = [int(f) for f in factor]
    full = [n * f for n, f in zip(lowres.shape[2:], factor)]
    up = lowres if factor == [1, 1, 1] else F.interpolate(lowres, size=full, mode="trilinear", align_corners=False)
    hr_shape = [int(n) for n in hr_shape]
    up = up[..., :hr_shape[0], :hr_shape[1], :hr_shape[2]]
    missing = [h - n for h, n in zip(hr_shape, up.shape[2:])]
    if any(missing):
        up = F.pad(up, [p for m in reversed(missing) for p in (0, m)], mode="replicate")
    return up


def degraded_condition(target: torch.Tensor, degradation: Mapping) -> torch.Tensor:
    """up(A(target)): the task's degradation of (B, 1, X, Y, Z) brought back to the target grid."""
    operator = operator_for(degradation)
    return upsample_to_grid(operator.A(target), operator.factor, target.shape[2:])


def _check_task(task_plans: Mapping) -> None:
    parametrization = task_plans["parametrization"]
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"Unknown parametrization {parametrization!r}; the plans support {list(PARAMETRIZATIONS)}.")
    if parametrization == "epsilon_residual" and not task_plans.get("degradation"):
        raise ValueError("parametrization 'epsilon_residual' needs a degradation (the residual is target - "
                         "up(A(target))); use 'epsilon_target' for a task without one.")


def make_condition(target: torch.Tensor, inputs: torch.Tensor, task_plans: Mapping):
    """(condition (B, n_cond, X, Y, Z), y0 (B, 1, X, Y, Z)) of a task from its target and input volumes.

    condition = [inputs..., up(A(target))] (the degraded channel only when the task has a degradation);
    y0 = target ("epsilon_target") or (target - up(A(target))) / 2 ("epsilon_residual", public code).
    """
    _check_task(task_plans)
    degradation = task_plans.get("degradation")
    parts = [inputs]
    if degradation:
        degraded = degraded_condition(target, degradation)
        parts.append(degraded)
    condition = torch.cat(parts, dim=1)
    expected = len(task_plans["condition_channels"])
    if condition.shape[1] != expected:
        raise ValueError(f"make_condition: {condition.shape[1]} condition channels but the task plans "
                         f"{expected} ({task_plans['condition_channels']}); inputs had {inputs.shape[1]}.")
    if task_plans["parametrization"] == "epsilon_residual":
        return condition, (target - degraded) / 2
    return condition, target.clone()


def y0_from_target(target: torch.Tensor, condition: torch.Tensor, task_plans: Mapping) -> torch.Tensor:
    """make_condition's y0 of a target given its condition: target, or (target - up(A(target))) / 2."""
    _check_task(task_plans)
    if task_plans["parametrization"] == "epsilon_residual":
        return (target - condition[:, -1:]) / 2
    return target


def target_from_y0(y0: torch.Tensor, condition: torch.Tensor, task_plans: Mapping) -> torch.Tensor:
    """Inverse of make_condition's y0: target = y0, or 2 y0 + up(A(target)) (the condition's last channel)."""
    _check_task(task_plans)
    if task_plans["parametrization"] == "epsilon_residual":
        return 2 * y0 + condition[:, -1:]
    return y0
