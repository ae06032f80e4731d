"""A trained model ready to sample: plans, dataset.json, the experts' runners and (optionally) the ensembler.

`-c` names either a trained ensembler configuration (3d_ensembler, 3d_ensembler_small, a fusion name) or a
strategy over trained experts: an expert configuration (2d_axial, ...: that expert alone), "average" or "tpdm"
(over the experts of the plans' ensembler, or the ones given with `experts`). Without `-c` the plans' first
ensembler is used if it is trained, else the average of its experts.

An ensembler is loaded with the exact expert checkpoints it was trained with: their SHA-256 must equal the ones
its checkpoint records, else the model is refused (the fused experts would not be the ones it learned to fuse).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffens_auto import paths
from diffens_auto.dataset.dataset_json import DatasetSpec, load_dataset_json
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.inference.dataset_lookup import find_dataset_json
from diffens_auto.diffusion.strategies import Windowed, build_strategy
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.planning.plans_schema import validate_plans
from diffens_auto.training.checkpoints import FINAL, file_sha256, load_checkpoint, model_from_checkpoint
from diffens_auto.training.experts import fold_folder, recorded_expert_files
from diffens_auto.training.model_folder import PLANS_FILE

EXPERT_STRATEGIES = ("average", "tpdm")


class PredictionSetupError(ValueError):
    """A prediction request that cannot run as given (no such model, task, strategy, flag combination ...)."""


@dataclass
class TrainedModel:
    """Everything sampling needs from the results folder, and the record of which files it came from."""

    dataset_name: str
    plans_name: str
    plans: dict
    dataset_spec: DatasetSpec
    task: str
    configuration: str
    fold: int | str
    strategy: object
    runners: dict
    ensembler: torch.nn.Module | None
    checkpoints: list = field(default_factory=list)   # [{"role", "name", "path", "sha256"}]

    @property
    def task_plans(self) -> dict:
        """The plans entry of the task."""
        return self.plans["tasks"][self.task]


def plans_names_in_results(dataset_results: Path, task: str) -> list[str]:
    """Plans names that have a trained configuration of `task` (CONFIG__PLANS folders)."""
    folder = dataset_results / task
    if not folder.is_dir():
        return []
    return sorted({p.name.split("__", 1)[1] for p in folder.iterdir() if p.is_dir() and "__" in p.name})


def _plans_name(dataset_results: Path, dataset_name: str, task: str, plans_name: str | None) -> str:
    if plans_name is not None:
        return plans_name
    found = plans_names_in_results(dataset_results, task)
    if len(found) == 1:
        return found[0]
    if not found:
        raise PredictionSetupError(
            f"No trained model of task '{task}' for {dataset_name} in {dataset_results}. Fix: train one "
            f"(diffens_train {dataset_name} {task} 2d_axial ...) or install one "
            "(diffens_install_pretrained_model_from_zip).")
    raise PredictionSetupError(f"Models of task '{task}' were trained with several plans {found}. Fix: choose one "
                               f"with -p, e.g. -p {found[0]}.")


def load_model_plans(model_folder: Path, dataset_name: str, plans_name: str) -> dict:
    """The plans a configuration was trained with (its plans.json), else the preprocessed folder's plans file."""
    path = model_folder / PLANS_FILE
    if path.is_file():
        plans = json.loads(path.read_text(encoding="utf-8"))
        validate_plans(plans, source=str(path))
        return plans
    return load_plans(paths.preprocessed_folder() / dataset_name, plans_name)


def load_model_dataset_json(model_folder: Path, dataset_name: str) -> DatasetSpec:
    """The dataset.json a configuration was trained with (its copy), else the dataset's (`find_dataset_json`)."""
    if (model_folder / "dataset.json").is_file():
        return load_dataset_json(model_folder)
    return find_dataset_json(dataset_name)


def _first_ensembler(plans: dict) -> str | None:
    names = [n for n, c in plans["configurations"].items() if c["kind"] == "ensembler"]
    return names[0] if names else None


def _trained(dataset_results: Path, task: str, configuration: str, plans_name: str, fold, checkpoint: str) -> bool:
    return (fold_folder(dataset_results, task, configuration, plans_name, fold) / checkpoint).is_file()


def default_configuration(dataset_results: Path, task: str, plans: dict, plans_name: str, fold,
                          checkpoint: str) -> str:
    """The plans' first ensembler if trained (else the average of its experts), as `-c` left out means."""
    ensembler = _first_ensembler(plans)
    if ensembler and _trained(dataset_results, task, ensembler, plans_name, fold, checkpoint):
        return ensembler
    return "average"


def _expert_runner(checkpoint_path: Path, name: str, slice_batch_size: int, device,
                   condition_indices=None) -> ExpertRunner:
    checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
    if checkpoint["kind"] != "expert":
        raise PredictionSetupError(f"{checkpoint_path} is a {checkpoint['kind']} checkpoint, not an expert.")
    expert = model_from_checkpoint(checkpoint, "ema", device).requires_grad_(False)
    return ExpertRunner.from_network(expert, checkpoint["network"], int(checkpoint["slice_axis"]), slice_batch_size,
                                     condition_indices=condition_indices, name=name)


def _missing_models_error(dataset_name, task, configurations, plans_name, fold, checkpoint) -> PredictionSetupError:
    commands = "\n  ".join(f"diffens_train {dataset_name} {task} {c} -f {fold} -p {plans_name}"
                           for c in configurations)
    return PredictionSetupError(f"No {checkpoint} for {', '.join(configurations)} (task '{task}', fold {fold}, "
                                f"plans {plans_name}). Fix: train them first:\n  {commands}")


def load_trained_model(dataset, task: str, configuration: str | None = None, fold=0, plans_name: str | None = None,
                       checkpoint: str = FINAL, device="cpu", experts: list[str] | None = None,
                       slice_batch_size: int | None = None, dataset_results: Path | None = None) -> TrainedModel:
    """Load a trained ensembler or build a strategy over trained experts, from diffens_results.

    `dataset_results` (a DatasetXXX_Name folder laid out as in diffens_results, anywhere) replaces
    diffens_results/DATASET.
    """
    if dataset_results is None:
        dataset_name = resolve_dataset_name(dataset)
        dataset_results = paths.results_folder() / dataset_name
    else:
        dataset_results = Path(dataset_results)
        dataset_name = dataset_results.name
    plans_name = _plans_name(dataset_results, dataset_name, task, plans_name)
    own = dataset_results / task / f"{configuration}__{plans_name}"
    plans = (load_model_plans(own, dataset_name, plans_name) if configuration and (own / PLANS_FILE).is_file()
             else _any_model_plans(dataset_results, dataset_name, task, plans_name))
    if task not in plans["tasks"]:
        raise PredictionSetupError(f"-t {task}: no such task in plans {plans_name} (tasks: {sorted(plans['tasks'])}).")
    if configuration is None:
        configuration = default_configuration(dataset_results, task, plans, plans_name, fold, checkpoint)
    if experts and configuration not in EXPERT_STRATEGIES:
        raise PredictionSetupError(f"--experts {' '.join(experts)}: only -c average or -c tpdm combine chosen experts "
                                   f"(-c {configuration} uses its own). Fix: add -c average, or leave --experts out.")
    batch = int(slice_batch_size or plans.get("inference", {}).get("slice_batch_size", 16))
    config = plans["configurations"].get(configuration)
    is_ensembler = (config is not None and config["kind"] == "ensembler") or (
        config is None and configuration not in EXPERT_STRATEGIES
        and _trained(dataset_results, task, configuration, plans_name, fold, checkpoint))
    if is_ensembler:
        return _load_ensembler(dataset_name, dataset_results, plans, plans_name, task, configuration, fold,
                               checkpoint, device, batch)
    return _load_expert_strategy(dataset_name, dataset_results, plans, plans_name, task, configuration, fold,
                                 checkpoint, device, batch, experts)


def _any_model_plans(dataset_results: Path, dataset_name: str, task: str, plans_name: str) -> dict:
    """Plans of any configuration of the task trained with `plans_name` (they are all the same file)."""
    folders = sorted((dataset_results / task).glob(f"*__{plans_name}")) if (dataset_results / task).is_dir() else []
    for folder in folders:
        if (folder / PLANS_FILE).is_file():
            return load_model_plans(folder, dataset_name, plans_name)
    return load_plans(paths.preprocessed_folder() / dataset_name, plans_name)


def _record(role: str, name: str, path: Path, sha256: str | None = None) -> dict:
    return {"role": role, "name": name, "path": str(path), "sha256": sha256 or file_sha256(path)}


def _load_ensembler(dataset_name, dataset_results, plans, plans_name, task, configuration, fold, checkpoint,
                    device, slice_batch_size) -> TrainedModel:
    folder = fold_folder(dataset_results, task, configuration, plans_name, fold)
    path = folder / checkpoint
    if not path.is_file():
        raise _missing_models_error(dataset_name, task, [configuration], plans_name, fold, checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    records, runners = [_record("ensembler", configuration, path)], {}
    for expert, expert_path, sha256 in recorded_expert_files(state, dataset_results, configuration):
        runners[expert["name"]] = _expert_runner(expert_path, expert["name"], slice_batch_size, device,
                                                 expert.get("condition_indices"))
        records.append(_record("expert", expert["name"], expert_path, sha256))
    ensembler = model_from_checkpoint(state, "ema", device).requires_grad_(False)
    strategy = build_strategy("learned", runners, ensembler)
    if state.get("patch_wise"):
        inference = plans.get("inference", {})
        strategy = Windowed(strategy, state["fine_tune_shape"], overlap=inference.get("sliding_window_overlap", 0.5),
                            sigma_scale=inference.get("gaussian_sigma_scale", 0.125))
    return TrainedModel(dataset_name, plans_name, plans, _dataset_spec(dataset_results, task, configuration,
                                                                       plans_name, dataset_name),
                        task, configuration, fold, strategy, runners, ensembler, records)


def _dataset_spec(dataset_results, task, configuration, plans_name, dataset_name) -> DatasetSpec:
    return load_model_dataset_json(dataset_results / task / f"{configuration}__{plans_name}", dataset_name)


def _load_expert_strategy(dataset_name, dataset_results, plans, plans_name, task, configuration, fold, checkpoint,
                          device, slice_batch_size, experts) -> TrainedModel:
    config = plans["configurations"].get(configuration)
    if config is not None and config["kind"] == "expert":
        names = [configuration]
    elif configuration in EXPERT_STRATEGIES:
        ensembler = _first_ensembler(plans)
        names = list(experts) if experts else list(plans["configurations"][ensembler]["experts"]) if ensembler else []
        unknown = [n for n in names if plans["configurations"].get(n, {}).get("kind") != "expert"]
        known = sorted(n for n, c in plans["configurations"].items() if c["kind"] == "expert")
        if not names:
            raise PredictionSetupError(f"-c {configuration}: plans {plans_name} have no ensembler whose experts it "
                                       f"could combine. Fix: name them with --experts (experts: {known}).")
        if unknown:
            raise PredictionSetupError(f"--experts {unknown}: not expert configurations of plans {plans_name} "
                                       f"(experts: {known}).")
    else:
        known = sorted(plans["configurations"]) + list(EXPERT_STRATEGIES)
        raise PredictionSetupError(f"-c {configuration}: neither a trained configuration of task '{task}' nor a "
                                   f"strategy. Choose one of {known} (or a trained fusion ensembler's name).")
    checkpoints = {n: fold_folder(dataset_results, task, n, plans_name, fold) / checkpoint for n in names}
    missing = [n for n, p in checkpoints.items() if not p.is_file()]
    if missing:
        raise _missing_models_error(dataset_name, task, missing, plans_name, fold, checkpoint)
    runners = {n: _expert_runner(p, n, slice_batch_size, device) for n, p in checkpoints.items()}
    strategy = build_strategy(names[0] if len(names) == 1 and configuration not in EXPERT_STRATEGIES
                              else configuration, runners)
    records = [_record("expert", n, p) for n, p in checkpoints.items()]
    return TrainedModel(dataset_name, plans_name, plans, _dataset_spec(dataset_results, task, names[0], plans_name,
                                                                       dataset_name),
                        task, configuration, fold, strategy, runners, None, records)


def parse_model_folder(model_folder: str | Path) -> dict:
    """{dataset_results, task, configuration, plans_name} of a DatasetXXX/TASK/CONFIG__PLANS folder."""
    folder = Path(model_folder).resolve()
    if folder.name.startswith("fold_"):
        folder = folder.parent
    configuration, sep, plans_name = folder.name.partition("__")
    if not sep or not folder.parent.parent.name.startswith("Dataset"):
        raise PredictionSetupError(f"{model_folder}: not a model folder. Fix: give .../DatasetXXX_Name/TASK/"
                                   "CONFIG__PLANS (e.g. Dataset900_DemoBrain/sr/3d_ensembler__diffensPlans).")
    return {"dataset_results": folder.parent.parent, "task": folder.parent.name, "configuration": configuration,
            "plans_name": plans_name}
