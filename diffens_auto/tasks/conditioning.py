"""Task conditioning shared by training, prediction and validation: what the networks see and what they predict.

A task (plans["tasks"][name]) has a target channel, input channels and optionally a degradation of the target:

    condition = [inputs..., up(A(target))]      channel order = plans condition_channels (inputs, then degraded)
    y0        = target                          "epsilon_target"   (noise predicted on the target)
              = s (target - up(A(target)))      "epsilon_residual" (noise predicted on the scaled SR residual)

s is the task's planned `residual_scale` (1 / the residual's RMS on the training cases, so y0 has about unit
variance and the standard noise schedule has signal over most of its steps); plans without the key mean the
public code's s = 1/2.

A is the task's degradation operator (`operators.operator_for`, the AvgPoolSR of `degrade_image`); up() brings the
low-resolution volume back to the target grid with trilinear interpolation whose low-resolution voxel centres sit
at the high-resolution block centres (the `lowres_grid` geometry). Volumes are renormalised for the task first
(`task_volumes`): the target with the plans' `target_normalization`, the inputs with `input_normalization`.

A reconstruction task (a `kspace` degradation) has no condition at all: its experts are unconditional priors of
the target (`epsilon_target`), so the condition is (B, 0, X, Y, Z) and y0 the target, scaled by its zero-filled
image (preprocessing's "degraded:KEY" set, center 0). Its measurement enters only at sampling, through the
k-space operator's data consistency.

The non-zero mask (`condition_mask`, for experts planned with a mask channel, the released code's input) marks the
voxels where any condition channel differs from its background, i.e. where the input scan is not 0. Training
takes it before intensity augmentation moves the background value; prediction from the prepared condition.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from diffens_auto.errors import DiffensError
from diffens_auto.operators import operator_for, upsample_to_grid
from diffens_auto.preprocessing.normalization import renormalize, select_params

PARAMETRIZATIONS = ("epsilon_target", "epsilon_residual")
LEGACY_RESIDUAL_SCALE = 0.5   # the public code's (target - up(A target)) / 2; plans made before the planned scale


class TaskPlansError(DiffensError, ValueError):
    """A task entry of the plans that cannot be used as written (a user edit), with the fix."""


def residual_scale(task_plans: Mapping) -> float:
    """The factor s of y0 = s (target - up(A(target))): the plans' residual_scale, or 1/2 for older plans."""
    return float(task_plans.get("residual_scale", LEGACY_RESIDUAL_SCALE))


def diffusion_for_task(plans: Mapping, task: str) -> dict:
    """The plans' diffusion settings with the task's own x0 clip bound and truncated start, where it has them."""
    diffusion = dict(plans["diffusion"])
    task_plans = plans["tasks"][task]
    if "clip_x0" in task_plans and diffusion.get("clip_x0", True) is not False:
        diffusion["clip_x0"] = float(task_plans["clip_x0"])
    if task_plans.get("start_timestep") is not None:
        if task_plans["parametrization"] != "epsilon_residual":
            raise TaskPlansError(f"Task '{task}': start_timestep starts sampling from y0 = 0, the interpolated input of "
                             "an SR residual; a task with parametrization "
                             f"{task_plans['parametrization']!r} has no such start. Fix: remove the key.")
        diffusion["start_timestep"] = int(task_plans["start_timestep"])
    return diffusion


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


MASK_TOLERANCE = 1e-4   # normalised units (the foreground range is [-1, 1]): above float rounding of a renormalised 0


def condition_background(background: Sequence[float], task_plans: Mapping) -> list[float]:
    """`task_background`'s values (target, then inputs) in condition order: the inputs', then the degraded target's."""
    values = [float(v) for v in background]
    return values[1:] + ([values[0]] if pooling(task_plans) else [])


def condition_mask(condition: torch.Tensor, background: Sequence[float]) -> torch.Tensor:
    """(B, 1, X, Y, Z) float mask of a (B, n_cond, X, Y, Z) condition: 1 where any channel is off its background."""
    if condition.shape[1] != len(background):
        raise ValueError(f"condition_mask: {condition.shape[1]} condition channels but {len(background)} "
                         "background values.")
    values = torch.as_tensor(list(background), dtype=condition.dtype, device=condition.device)
    off = (condition - values.reshape(1, -1, 1, 1, 1)).abs() > MASK_TOLERANCE
    return off.any(dim=1, keepdim=True).to(condition.dtype)


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


def pooling(task_plans: Mapping) -> dict | None:
    """The task's average-pooling degradation, or None (no degradation, or a k-space one).

    It is what the degraded condition and the SR residual come from.
    """
    degradation = task_plans.get("degradation")
    return degradation if degradation and degradation.get("type", "avgpool") == "avgpool" else None


def degraded_condition(target: torch.Tensor, degradation: Mapping) -> torch.Tensor:
    """up(A(target)): the task's degradation of (B, 1, X, Y, Z) brought back to the target grid."""
    operator = operator_for(degradation)
    return upsample_to_grid(operator.A(target), operator.factor, target.shape[2:])


def _check_task(task_plans: Mapping) -> None:
    parametrization = task_plans["parametrization"]
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"Unknown parametrization {parametrization!r}; the plans support {list(PARAMETRIZATIONS)}.")
    if parametrization == "epsilon_residual" and not pooling(task_plans):
        raise ValueError("parametrization 'epsilon_residual' needs a degradation by average pooling (the residual is "
                         "target - up(A(target))); use 'epsilon_target' for a task without one or with a kspace one.")


def make_condition(target: torch.Tensor, inputs: torch.Tensor, task_plans: Mapping):
    """(condition (B, n_cond, X, Y, Z), y0 (B, 1, X, Y, Z)) of a task from its target and input volumes.

    condition = [inputs..., up(A(target))] (the degraded channel only when the task average-pools its target; a
    k-space task has neither, so its condition has 0 channels); y0 = target ("epsilon_target") or
    s (target - up(A(target))) ("epsilon_residual", s = `residual_scale`).
    """
    _check_task(task_plans)
    degradation = pooling(task_plans)
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
        return condition, (target - degraded) * residual_scale(task_plans)
    return condition, target.clone()


def y0_from_target(target: torch.Tensor, condition: torch.Tensor, task_plans: Mapping) -> torch.Tensor:
    """make_condition's y0 of a target given its condition: target, or s (target - up(A(target)))."""
    _check_task(task_plans)
    if task_plans["parametrization"] == "epsilon_residual":
        return (target - condition[:, -1:]) * residual_scale(task_plans)
    return target


def target_from_y0(y0: torch.Tensor, condition: torch.Tensor, task_plans: Mapping) -> torch.Tensor:
    """Inverse of make_condition's y0: target = y0, or y0 / s + up(A(target)) (the condition's last channel)."""
    _check_task(task_plans)
    if task_plans["parametrization"] == "epsilon_residual":
        return y0 / residual_scale(task_plans) + condition[:, -1:]
    return y0
