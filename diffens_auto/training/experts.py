"""The trained 2D experts an ensembler fuses: which ones, whether they exist, and loading them frozen.

A standard ensembler configuration (`3d_ensembler`) fuses the experts its plans entry names, trained on the
same task and fold. A fusion ensembler (`--experts sr:2d_axial mt:2d_axial --name 3d_fusion`, Diff-Ensembler
Sec. 3.4) fuses experts trained on OTHER tasks: each expert sees only its own task's condition channels, picked
out of the ensembler task's conditions (`condition_indices`), and its network keeps the plans topology with
in_channels, out_channels and feature-injection entries recomputed for the experts it has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.diffusion.target_space import set_case_params
from diffens_auto.errors import DiffensError
from diffens_auto.hashing import file_sha256
from diffens_auto.model_folder.checkpoints import FINAL, load_checkpoint, model_from_checkpoint
from diffens_auto.model_folder.location import ModelLocation
from diffens_auto.model_folder.recorded_experts import ExpertMismatchError
from diffens_auto.planning import network_for_task
from diffens_auto.planning.topology import ensembler_in_channels, ensembler_out_channels, feature_injection
from diffens_auto.tasks.conditioning import pooling
from diffens_auto.tasks.fusion import in_ensembler_space, space_conversion


class ExpertsNotTrainedError(DiffensError, FileNotFoundError):
    """An ensembler's experts have no checkpoint_final.pth yet."""


@dataclass(frozen=True)
class ExpertSpec:
    """One expert of an ensembler: trained on `task` with plans configuration `configuration`."""

    task: str
    configuration: str
    name: str          # the name the ensembler knows it by (its feature-injection entries use it)


def parse_expert(text: str, plans: dict) -> ExpertSpec:
    """'TASK:CONFIG' (e.g. sr:2d_axial) -> ExpertSpec named 'TASK:CONFIG'; checked against the plans."""
    task, sep, configuration = text.partition(":")
    if not sep or not task or not configuration:
        raise ExpertMismatchError(f"--experts {text!r}: write each expert as TASK:CONFIG, e.g. sr:2d_axial.")
    if task not in plans["tasks"]:
        raise ExpertMismatchError(f"--experts {text!r}: no task '{task}' in the plans "
                                  f"(tasks: {sorted(plans['tasks'])}).")
    config = plans["configurations"].get(configuration)
    if config is None or config["kind"] != "expert":
        experts = sorted(n for n, c in plans["configurations"].items() if c["kind"] == "expert")
        raise ExpertMismatchError(f"--experts {text!r}: '{configuration}' is not an expert configuration of the "
                                  f"plans (experts: {experts}).")
    return ExpertSpec(task, configuration, f"{task}:{configuration}")


def expert_specs(plans: dict, configuration: str, task: str, experts: list[str] | None) -> list[ExpertSpec]:
    """The experts of an ensembler: the plans' own (same task) or the `--experts TASK:CONFIG` list (fusion)."""
    if experts:
        specs = [parse_expert(text, plans) for text in experts]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ExpertMismatchError(f"--experts lists an expert twice: {names}.")
        return specs
    return [ExpertSpec(task, name, name) for name in plans["configurations"][configuration]["experts"]]


def train_command(dataset_name: str, spec: ExpertSpec, fold, plans_name: str) -> str:
    return f"diffens_train {dataset_name} {spec.task} {spec.configuration} -f {fold} -p {plans_name}"


def check_experts_trained(specs, ensembler: ModelLocation) -> list[ModelLocation]:
    """The experts' locations (same dataset, plans, fold); ExpertsNotTrainedError naming the commands if any lacks
    its checkpoint_final.pth."""
    dataset_name, plans_name, fold = ensembler.dataset_name, ensembler.plans_name, ensembler.fold
    locations = [ensembler.with_configuration(s.configuration, s.task) for s in specs]
    missing = [train_command(dataset_name, s, fold, plans_name) for s, location in zip(specs, locations)
               if not location.checkpoint(FINAL).is_file()]
    if missing:
        raise ExpertsNotTrainedError(
            f"The ensembler needs its trained experts (fold {fold}), but {len(missing)} of {len(specs)} have no "
            f"{FINAL}. Train them first:\n  " + "\n  ".join(missing))
    return locations


def condition_indices(plans: dict, ensembler_task: str, expert_task: str) -> list[int] | None:
    """Where the expert task's condition channels sit among the ensembler task's (None: the same channels)."""
    ens, exp = plans["tasks"][ensembler_task], plans["tasks"][expert_task]
    if expert_task == ensembler_task:
        return None
    _, problems = space_conversion(plans, ensembler_task, expert_task)
    if pooling(exp) and exp["degradation"] != ens["degradation"]:
        problems.append(f"degradation {exp['degradation']} (task '{expert_task}') vs {ens['degradation']} "
                        f"(task '{ensembler_task}'): the degraded-target condition would mean something else")
    missing = [c for c in exp["condition_channels"] if c not in ens["condition_channels"]]
    if missing:
        problems.append(f"condition channels {missing} of task '{expert_task}' are not conditions of task "
                        f"'{ensembler_task}' ({ens['condition_channels']})")
    if problems:
        raise ExpertMismatchError(
            f"Experts of task '{expert_task}' cannot be fused into an ensembler for task '{ensembler_task}': "
            + "; ".join(problems) + ". Fix: fuse experts of tasks with the same target whose conditions are "
            "conditions of the ensembler's task (the planned sr and mt tasks fuse into both).")
    return [ens["condition_channels"].index(c) for c in exp["condition_channels"]]


def ensembler_network(plans: dict, configuration: str, task: str, specs: list[ExpertSpec]) -> dict:
    """The ensembler's network dict: the plans' own, or (fusion) its topology re-fitted to these experts."""
    config = plans["configurations"][configuration]
    standard = [s.name for s in specs] == list(config["experts"]) and all(s.task == task for s in specs)
    if standard:
        return network_for_task(plans, configuration, task)
    network = dict(config["network"])
    n = len(specs)
    network["in_channels"] = ensembler_in_channels(len(plans["tasks"][task]["condition_channels"]), n)
    network["out_channels"] = ensembler_out_channels(n)
    network["output_heads"] = {"weights": n - 1, "residual": 1}
    if config["network"].get("feature_injection"):
        experts = {s.name: plans["configurations"][s.configuration] for s in specs}
        network["feature_injection"] = feature_injection(experts, network, config["fine_tune_shape"])
    return network


@dataclass
class FrozenExpert:
    """A loaded expert: its runner (EMA weights, eval, no grad) and the record the ensembler checkpoint keeps."""

    runner: ExpertRunner
    record: dict


def load_frozen_experts(specs, locations: list[ModelLocation], plans: dict, *, configuration: str, task: str,
                        device) -> list[FrozenExpert]:
    """Load every expert's final EMA weights, frozen, each wrapped in an ExpertRunner over its plane."""
    slice_batch_size = plans["configurations"][configuration]["expert_slice_batch_size"]
    loaded = []
    for spec, location in zip(specs, locations):
        path = location.checkpoint(FINAL)
        sha256 = file_sha256(path)
        checkpoint = load_checkpoint(path, map_location="cpu")
        expert = model_from_checkpoint(checkpoint, "ema", device).requires_grad_(False)
        indices = condition_indices(plans, task, spec.task)
        runner = in_ensembler_space(ExpertRunner.from_network(expert, checkpoint["network"], checkpoint["slice_axis"],
                                                              slice_batch_size, condition_indices=indices,
                                                              name=spec.name), plans, task, spec.task)
        record = {"name": spec.name, "task": spec.task, "configuration": spec.configuration,
                  # relative to the dataset's results folder: TASK/CONFIG__PLANS/fold_F/checkpoint_final.pth
                  "checkpoint": location.relative(path),
                  "sha256": sha256, "slice_axis": int(checkpoint["slice_axis"]),
                  "network": checkpoint["network"], "parametrization": checkpoint["parametrization"],
                  "prediction": checkpoint.get("task_plans", {}).get("prediction", "epsilon"),
                  # what the conversion into the ensembler's space reads from the plans: checked against them
                  "space": {key: checkpoint.get("task_plans", {}).get(key)
                            for key in ("residual_scale", "target_normalization")},
                  "condition_indices": indices, "epoch": int(checkpoint["epoch"])}
        loaded.append(FrozenExpert(runner, record))
    return loaded


def check_expert_hashes(recorded: list[dict], loaded: list[FrozenExpert]) -> None:
    """A resumed ensembler must see the experts it started with (same names, same checkpoint bytes)."""
    if [r["name"] for r in recorded] != [e.record["name"] for e in loaded]:
        raise ExpertMismatchError(
            f"This ensembler was started with experts {[r['name'] for r in recorded]} but now gets "
            f"{[e.record['name'] for e in loaded]}. Fix: continue with the same --experts, or train it anew "
            "(without --c).")
    for old, new in zip(recorded, loaded):
        if old["sha256"] != new.record["sha256"]:
            raise ExpertMismatchError(
                f"Expert {old['name']} changed since this ensembler started ({old['checkpoint']}: SHA-256 "
                f"{old['sha256'][:12]}... then, {new.record['sha256'][:12]}... now). Fix: train the ensembler anew "
                "(without --c), or restore the expert checkpoint it was trained with.")


@torch.no_grad()
def run_experts(experts: list[FrozenExpert], y_t, condition, t, *, want_features: bool, positions=None,
                target_params=None):
    """Every expert over every slice of the volume: eps list and {name: restacked features} (Eq. 4).

    `target_params` (B, 2): each case's [center, half_range] of the ensembler task's target normalisation, what
    an expert of another task's space needs (ConvertedRunner).
    """
    set_case_params([expert.runner for expert in experts], target_params)
    eps_list, features = [], {}
    for expert in experts:
        eps, maps = expert.runner(y_t, condition, t, want_features=want_features, positions=positions)
        eps_list.append(eps)
        features[expert.runner.name] = maps
    return eps_list, (features if want_features else None)
