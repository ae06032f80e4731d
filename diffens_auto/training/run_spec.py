"""What `diffens_train DATASET TASK CONFIG ...` trains, checked against the plans and the folders before any work."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffens_auto import devices, paths
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.dataset.splits import split_case_ids
from diffens_auto.model_folder.location import ModelFolderError, ModelLocation, parse_fold
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.training.errors import TrainingSetupError


@dataclass(kw_only=True)
class RunSpec:
    """A resolved training request: plans, task, configuration, fold, its cases and where its results go."""

    plans: dict
    task: str
    configuration: str            # plans configuration of the topology
    kind: str                     # "expert" | "ensembler"
    location: ModelLocation       # where the results go (configuration: the name they are saved under)
    preprocessed_dataset_folder: Path
    train_cases: list = field(default_factory=list)
    val_cases: list = field(default_factory=list)
    experts: list | None = None   # ensembler: the --experts TASK:CONFIG list (None: the plans' own)

    @property
    def dataset_name(self) -> str:
        """DatasetXXX_Name."""
        return self.location.dataset_name

    @property
    def plans_name(self) -> str:
        """The plans' name (diffensPlans, diffensPlans_tiny, ...)."""
        return self.location.plans_name

    @property
    def name(self) -> str:
        """The configuration name the results are saved under (a fusion ensembler's --name)."""
        return self.location.configuration

    @property
    def fold(self) -> int | str:
        """The fold: a number or "all"."""
        return self.location.fold

    @property
    def output_folder(self) -> Path:
        """diffens_results/DatasetXXX/TASK/CONFIG__PLANS/fold_F."""
        return self.location.fold_folder


def training_fold(fold) -> int | str:
    """The fold of a training request (a number or "all"); TrainingSetupError for anything else."""
    try:
        return parse_fold(fold)
    except ModelFolderError as e:
        raise TrainingSetupError(str(e)) from None


def fold_cases(preprocessed_dataset_folder: Path, fold) -> tuple[list, list]:
    """(train case ids, validation case ids) of a fold of splits_final.json ("all": every case for both)."""
    try:
        return split_case_ids(preprocessed_dataset_folder, fold)
    except ValueError as e:
        raise TrainingSetupError(f"-f {fold}: {e}") from None


def _check_request(plans: dict, task: str, configuration: str, experts, name) -> dict:
    """The plans configuration of the request; TrainingSetupError naming the fix for an impossible one."""
    if task not in plans["tasks"]:
        raise TrainingSetupError(f"No task '{task}' in the plans (tasks: {sorted(plans['tasks'])}).")
    config = plans["configurations"].get(configuration)
    if config is None:
        raise TrainingSetupError(f"No configuration '{configuration}' in plans {plans['plans_name']} "
                                 f"(configurations: {sorted(plans['configurations'])}).")
    if experts and config["kind"] != "ensembler":
        raise TrainingSetupError(f"--experts builds a fusion ensembler from an ensembler topology; '{configuration}'"
                                 f" is an expert. Use e.g. 3d_ensembler --experts sr:2d_axial mt:2d_axial --name ...")
    if bool(experts) != bool(name):
        raise TrainingSetupError("--experts and --name go together: a fusion ensembler (--experts TASK:CONFIG ...) "
                                 "is saved under its own configuration name (--name, e.g. 3d_fusion).")
    if name and name in plans["configurations"]:
        raise TrainingSetupError(f"--name {name}: choose a name that is not a plans configuration "
                                 f"({sorted(plans['configurations'])}), e.g. 3d_fusion.")
    return config


def resolve_run(dataset, task: str, configuration: str, fold=0, plans_name: str | None = None, *,
                experts: list | None = None, name: str | None = None) -> RunSpec:
    """Check the request against the plans and find its folders (no training, no files written)."""
    dataset_name = resolve_dataset_name(dataset)
    preprocessed = paths.preprocessed_folder() / dataset_name
    plans = load_plans(preprocessed, plans_name)
    config = _check_request(plans, task, configuration, experts, name)
    fold = training_fold(fold)
    train_cases, val_cases = fold_cases(preprocessed, fold)
    location = ModelLocation(paths.results_folder() / dataset_name, task, name or configuration, plans["plans_name"],
                             fold)
    return RunSpec(plans=plans, task=task, configuration=configuration, kind=config["kind"], location=location,
                   preprocessed_dataset_folder=preprocessed, train_cases=train_cases, val_cases=val_cases,
                   experts=list(experts) if experts else None)


def check_device(device) -> torch.device:
    """The training device, TrainingSetupError with the fix when this machine lacks it."""
    return devices.check_device(device, TrainingSetupError)
