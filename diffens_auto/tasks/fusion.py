"""Which experts of other tasks an ensembler can fuse, and the map from its diffusion space into theirs.

Tasks that share a target (sr, mt and both for FLAIR) are planned each in its own space: SR tasks on the scaled
residual with v-prediction and the target normalised by the degraded input's percentiles, MT tasks on the target
with eps-prediction and the dataset's normalisation. Instead of planning one space for all of them (which would
give SR the dataset normalisation and MT a residual it has no input for), an expert of another space is run
through `diffusion.target_space.ConvertedRunner`: exact up to the rounding of its timestep, and at no cost to
the SR tasks' own models.
"""
from __future__ import annotations

from typing import Mapping

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.target_space import ConvertedRunner, SpaceConversion, TargetSpace
from diffens_auto.tasks.conditioning import TaskPlansError, pooling, residual_scale


def target_space(task_plans: Mapping) -> TargetSpace:
    """The diffusion space of a task's networks: its residual scale (None without a residual) and prediction."""
    residual = task_plans["parametrization"] == "epsilon_residual"
    return TargetSpace(residual_scale(task_plans) if residual else None, task_plans.get("prediction", "epsilon"))


def _degraded_index(task_plans: Mapping) -> int | None:
    if not pooling(task_plans):
        return None
    return list(task_plans["condition_channels"]).index(int(task_plans["target"]))


def space_conversion(plans: Mapping, ensembler_task: str, expert_task: str) -> tuple[SpaceConversion | None, list]:
    """(conversion or None when the spaces are the same, problems): how the ensembler's y_t reaches the expert.

    Problems (non-empty: the expert cannot be fused) name what differs beyond what the conversion handles.
    """
    ens, exp = plans["tasks"][ensembler_task], plans["tasks"][expert_task]
    if exp["target"] != ens["target"]:
        return None, [f"target {exp['target']} (task '{expert_task}') vs {ens['target']} (task '{ensembler_task}'): "
                      "an ensembler fuses estimates of one image"]
    ens_space, exp_space = target_space(ens), target_space(exp)
    same_normalization = exp["target_normalization"] == ens["target_normalization"]
    if same_normalization and ens_space == exp_space:
        return None, []
    if not same_normalization and exp["target_normalization"] != "dataset":
        # the expert's scale of the target would come from its own task's inputs, which the ensembler lacks
        return None, [f"target_normalization {exp['target_normalization']!r} (task '{expert_task}') vs "
                      f"{ens['target_normalization']!r} (task '{ensembler_task}'): only an expert on the dataset's "
                      "normalisation (or the ensembler's own) can be run in another task's space"]
    if (ens_space.residual_scale is not None or exp_space.residual_scale is not None) and not pooling(ens):
        return None, [f"task '{expert_task}' predicts an SR residual but task '{ensembler_task}' has no degraded "
                      "input to form it"]
    params = None if same_normalization else dict(plans["normalization"]["dataset"][str(exp["target"])])
    return SpaceConversion(ens_space, exp_space, params, _degraded_index(ens)), []


def in_ensembler_space(runner, plans: Mapping, ensembler_task: str, expert_task: str):
    """The expert's runner itself, or (an expert of another task's space) a ConvertedRunner into the ensembler's."""
    conversion, problems = space_conversion(plans, ensembler_task, expert_task)
    if problems:
        raise TaskPlansError(f"Expert {runner.name} (task '{expert_task}') cannot run in task '{ensembler_task}': "
                             + "; ".join(problems) + ". Fix: fuse experts of tasks with the same target whose "
                             "conditions the ensembler's task has (the planned sr and mt tasks fuse into both).")
    if conversion is None:
        return runner
    return ConvertedRunner(runner, conversion, NoiseSchedule.from_plans(plans["diffusion"]))
