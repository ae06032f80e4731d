"""A trained model ready to sample: plans, dataset.json, the experts' runners and (optionally) the ensembler.

`-c` names either a trained ensembler configuration (3d_ensembler, 3d_ensembler_small, a fusion name) or a
strategy over trained experts: an expert configuration (2d_axial, ...: that expert alone), "average" or "tpdm"
(over the experts of the plans' ensembler, or the ones given with `experts`). Without `-c` the plans' first
ensembler is used if it is trained, else the average of its experts.

An ensembler is loaded with the exact expert checkpoints it was trained with: their SHA-256 must equal the ones
its checkpoint records, else the model is refused (the fused experts would not be the ones it learned to fuse).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffens_auto import paths
from diffens_auto.dataset.dataset_json import DatasetSpec
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.devices import autocast_for
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.diffusion.strategies import Windowed, build_strategy
from diffens_auto.errors import DiffensError
from diffens_auto.hashing import file_sha256
from diffens_auto.model_folder.checkpoints import FINAL, load_checkpoint, model_from_checkpoint
from diffens_auto.model_folder.files import PLANS_FILE, load_model_dataset_json, load_model_plans
from diffens_auto.model_folder.location import (ModelFolderError, ModelLocation, model_folders, parse_fold,
                                                plans_names_in_results)
from diffens_auto.model_folder.recorded_experts import recorded_expert_files
from diffens_auto.planning.plans_file import PlansNotFoundError, load_plans
from diffens_auto.tasks.fusion import in_ensembler_space

EXPERT_STRATEGIES = ("average", "tpdm")


class PredictionSetupError(DiffensError, ValueError):
    """A prediction request that cannot run as given (no such model, task, strategy, flag combination ...)."""


@contextmanager
def prediction_request():
    """Report a malformed model folder or fold (model_folder.location) as the PredictionSetupError it is here."""
    try:
        yield
    except ModelFolderError as e:
        raise PredictionSetupError(str(e)) from None


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


@dataclass(frozen=True)
class LoadRequest:
    """Which files a prediction loads: the location (configuration: what -c names), checkpoint, device, batch."""

    location: ModelLocation
    checkpoint: str
    device: object
    slice_batch_size: int


def _plans_name(dataset_results: Path, task: str, plans_name: str | None) -> str:
    if plans_name is not None:
        return plans_name
    found = plans_names_in_results(dataset_results, task)
    if len(found) == 1:
        return found[0]
    dataset_name = dataset_results.name
    if not found:
        raise PredictionSetupError(
            f"No trained model of task '{task}' for {dataset_name} in {dataset_results}. Fix: train one "
            f"(diffens_train {dataset_name} {task} 2d_axial ...) or install one "
            "(diffens_install_pretrained_model_from_zip).")
    raise PredictionSetupError(f"Models of task '{task}' were trained with several plans {found}. Fix: choose one "
                               f"with -p, e.g. -p {found[0]}.")


def _first_ensembler(plans: dict) -> str | None:
    names = [n for n, c in plans["configurations"].items() if c["kind"] == "ensembler"]
    return names[0] if names else None


def default_configuration(dataset_results: Path, task: str, plans: dict, *, fold, checkpoint: str) -> str:
    """The plans' first ensembler if trained (else the average of its experts), as `-c` left out means."""
    ensembler = _first_ensembler(plans)
    location = ModelLocation(dataset_results, task, ensembler, plans["plans_name"], fold) if ensembler else None
    if location is not None and location.checkpoint(checkpoint).is_file():
        return ensembler
    return "average"


def _expert_runner(checkpoint_path: Path, name: str, request: LoadRequest, condition_indices=None) -> ExpertRunner:
    checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
    if checkpoint["kind"] != "expert":
        raise PredictionSetupError(f"{checkpoint_path} is a {checkpoint['kind']} checkpoint, not an expert.")
    expert = model_from_checkpoint(checkpoint, "ema", request.device).requires_grad_(False)
    return ExpertRunner.from_network(expert, checkpoint["network"], int(checkpoint["slice_axis"]),
                                     request.slice_batch_size, condition_indices=condition_indices, name=name)


def _missing_models_error(request: LoadRequest, configurations) -> PredictionSetupError:
    location, checkpoint = request.location, request.checkpoint
    commands = "\n  ".join(f"diffens_train {location.dataset_name} {location.task} {c} -f {location.fold} "
                           f"-p {location.plans_name}" for c in configurations)
    return PredictionSetupError(f"No {checkpoint} for {', '.join(configurations)} (task '{location.task}', fold "
                                f"{location.fold}, plans {location.plans_name}). Fix: train them first:\n  {commands}")


def load_trained_model(dataset, task: str, configuration: str | None = None, fold=0, plans_name: str | None = None, *,
                       checkpoint: str = FINAL, device="cpu", experts: list[str] | None = None,
                       slice_batch_size: int | None = None, dataset_results: Path | None = None) -> TrainedModel:
    """Load a trained ensembler or build a strategy over trained experts, from diffens_results.

    `dataset_results` (a DatasetXXX_Name folder laid out as in diffens_results, anywhere) replaces
    diffens_results/DATASET.
    """
    if dataset_results is None:
        dataset_results = paths.results_folder() / resolve_dataset_name(dataset)
    dataset_results = Path(dataset_results)
    plans_name = _plans_name(dataset_results, task, plans_name)
    with prediction_request():
        fold = parse_fold(fold)
    plans = _model_plans(dataset_results, task, configuration, plans_name)
    if task not in plans["tasks"]:
        raise PredictionSetupError(f"-t {task}: no such task in plans {plans_name} (tasks: {sorted(plans['tasks'])}).")
    if configuration is None:
        configuration = default_configuration(dataset_results, task, plans, fold=fold, checkpoint=checkpoint)
    location = ModelLocation(dataset_results, task, configuration, plans_name, fold)
    if experts and location.configuration not in EXPERT_STRATEGIES:
        raise PredictionSetupError(f"--experts {' '.join(experts)}: only -c average or -c tpdm combine chosen experts "
                                   f"(-c {location.configuration} uses its own). Fix: add -c average, or leave "
                                   "--experts out.")
    batch = int(slice_batch_size or plans.get("inference", {}).get("slice_batch_size", 16))
    request = LoadRequest(location, checkpoint, device, batch)
    config = plans["configurations"].get(location.configuration)
    is_ensembler = (config is not None and config["kind"] == "ensembler") or (
        config is None and location.configuration not in EXPERT_STRATEGIES
        and location.checkpoint(checkpoint).is_file())
    if is_ensembler:
        return _load_ensembler(request, plans)
    return _load_expert_strategy(request, plans, experts)


def _model_plans(dataset_results: Path, task: str, configuration: str | None, plans_name: str) -> dict:
    """The plans the configuration was trained with, else those of any model folder of the task with these plans
    (they are all the same file), else the preprocessed folder's plans file."""
    trained = [m for m in model_folders(dataset_results, task)
               if m.plans_name == plans_name and (m.model_folder / PLANS_FILE).is_file()]
    for model in [m for m in trained if m.configuration == configuration] + trained:
        return load_model_plans(model.model_folder, dataset_results.name, plans_name)
    return load_plans(paths.preprocessed_folder() / dataset_results.name, plans_name)


def load_task_plans(dataset, task: str, plans_name: str | None = None) -> tuple[str, dict]:
    """(dataset name, plans) of a task without loading a model: any model folder's plans, else the preprocessed's.

    For what needs the plans alone (the zero-filled baseline of a recon task). The plans name is `plans_name`, else
    the only one the task's models were trained with, else the only plans file of the preprocessed folder.
    """
    dataset_name = resolve_dataset_name(dataset)
    dataset_results = paths.results_folder() / dataset_name
    if plans_name is None and plans_names_in_results(dataset_results, task):
        plans_name = _plans_name(dataset_results, task, None)
    try:
        if plans_name is None:
            plans = load_plans(paths.preprocessed_folder() / dataset_name)
        else:
            plans = _model_plans(dataset_results, task, None, plans_name)
    except PlansNotFoundError as e:
        raise PredictionSetupError(f"-t {task}: no trained model and {e}") from None
    if task not in plans["tasks"]:
        raise PredictionSetupError(f"-t {task}: no such task in plans {plans['plans_name']} (tasks: "
                                   f"{sorted(plans['tasks'])}).")
    return dataset_name, plans


def _record(role: str, name: str, path: Path, sha256: str | None = None) -> dict:
    return {"role": role, "name": name, "path": str(path), "sha256": sha256 or file_sha256(path)}


def _set_precision(network, precision, compile_networks: bool = False) -> None:
    """Give a runner or strategy (and what it wraps: a window's strategy, a converted runner) the precision and,
    with `compile_networks`, a torch.compile'd copy of its network."""
    if hasattr(network, "autocast"):
        network.autocast = precision
    module = getattr(network, "expert", None)
    if module is None:
        module = getattr(network, "ensembler", None)
    if compile_networks and hasattr(network, "compiled") and module is not None:
        network.compiled = torch.compile(module)
    for inner in ("strategy", "runner"):
        if getattr(network, inner, None) is not None:
            _set_precision(getattr(network, inner), precision, compile_networks)


def _trained_model(request: LoadRequest, plans: dict, spec_configuration: str, strategy, runners: dict, *,
                   records: list, ensembler: torch.nn.Module | None = None) -> TrainedModel:
    """A TrainedModel of the request's location with the dataset.json of `spec_configuration`'s model folder."""
    location = request.location
    spec = load_model_dataset_json(location.with_configuration(spec_configuration).model_folder,
                                   location.dataset_name)
    # the networks run in the plans' precision on this device (devices.autocast_for); everything else in float32
    precision = functools.partial(autocast_for, plans.get("dtype"), request.device, force=paths.force_autocast())
    compile_networks = paths.compile_networks()
    for network in [*runners.values(), strategy]:
        _set_precision(network, precision, compile_networks)
    return TrainedModel(location.dataset_name, location.plans_name, plans, spec, location.task,
                        location.configuration, location.fold, strategy, runners, ensembler, records)


def _load_ensembler(request: LoadRequest, plans: dict) -> TrainedModel:
    location = request.location
    path = location.checkpoint(request.checkpoint)
    if not path.is_file():
        raise _missing_models_error(request, [location.configuration])
    state = load_checkpoint(path, map_location="cpu")
    records, runners = [_record("ensembler", location.configuration, path)], {}
    for expert, expert_path, sha256 in recorded_expert_files(state, location.dataset_results,
                                                             location.configuration):
        runner = _expert_runner(expert_path, expert["name"], request, expert.get("condition_indices"))
        # a fusion ensembler's expert of another task runs converted into this task's space
        runners[expert["name"]] = in_ensembler_space(runner, plans, location.task, expert.get("task", location.task))
        records.append(_record("expert", expert["name"], expert_path, sha256))
    ensembler = model_from_checkpoint(state, "ema", request.device).requires_grad_(False)
    strategy = build_strategy("learned", runners, ensembler)
    if state.get("patch_wise"):
        inference = plans.get("inference", {})
        strategy = Windowed(strategy, state["fine_tune_shape"], overlap=inference.get("sliding_window_overlap", 0.5),
                            sigma_scale=inference.get("gaussian_sigma_scale", 0.125))
    return _trained_model(request, plans, location.configuration, strategy, runners, records=records,
                          ensembler=ensembler)


def _strategy_experts(request: LoadRequest, plans: dict, experts) -> list[str]:
    """The expert configurations an expert strategy (-c EXPERT, average, tpdm) runs; refused when unknown."""
    configuration, plans_name = request.location.configuration, request.location.plans_name
    config = plans["configurations"].get(configuration)
    if config is not None and config["kind"] == "expert":
        return [configuration]
    if configuration not in EXPERT_STRATEGIES:
        known = sorted(plans["configurations"]) + list(EXPERT_STRATEGIES)
        raise PredictionSetupError(f"-c {configuration}: neither a trained configuration of task "
                                   f"'{request.location.task}' nor a strategy. Choose one of {known} (or a trained "
                                   "fusion ensembler's name).")
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
    return names


def _load_expert_strategy(request: LoadRequest, plans: dict, experts) -> TrainedModel:
    location = request.location
    names = _strategy_experts(request, plans, experts)
    checkpoints = {n: location.with_configuration(n).checkpoint(request.checkpoint) for n in names}
    missing = [n for n, p in checkpoints.items() if not p.is_file()]
    if missing:
        raise _missing_models_error(request, missing)
    runners = {n: _expert_runner(p, n, request) for n, p in checkpoints.items()}
    single = len(names) == 1 and location.configuration not in EXPERT_STRATEGIES
    strategy = build_strategy(names[0] if single else location.configuration, runners)
    records = [_record("expert", n, p) for n, p in checkpoints.items()]
    return _trained_model(request, plans, names[0], strategy, runners, records=records)
