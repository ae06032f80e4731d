"""A Trainer assembled from a resolved run: the model (seeded), its objective, schedule, loaders and metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.model_folder.recorded_experts import ExpertMismatchError
from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.planning import network_for_task
from diffens_auto.training.data_loading import EnsemblerDataLoader, ExpertDataLoader
from diffens_auto.training.experts import (check_expert_hashes, check_experts_trained, ensembler_network, expert_specs,
                                           load_frozen_experts)
from diffens_auto.training.objectives import EnsemblerObjective, ExpertObjective
from diffens_auto.training.rng import seed_everything
from diffens_auto.training.run_spec import RunSpec, check_device
from diffens_auto.training.schedule import Stage, make_schedule, per_rank_schedule
from diffens_auto.training.trainer import LoaderFactory, Trainer


@dataclass(frozen=True)
class TrainingOptions:
    """How one run trains, beside what the plans say: device, epoch overrides, seed, resume, loaders, echo."""

    device: str | torch.device = "cpu"
    num_epochs: int | None = None              # --epochs (None: the plans')
    iterations_per_epoch: int | None = None    # --iterations_per_epoch (None: the plans')
    seed: int = 0
    continue_training: bool = False            # --c
    loaders: LoaderFactory | None = None       # None: the preprocessed data's loaders (default_loaders)
    echo: bool = True                          # print the log lines too


def default_loaders(run: RunSpec) -> LoaderFactory:
    """The training data loaders (training/data_loading.py) of a run as a LoaderFactory.

    Training batches use `diffens_n_proc_DA` augmentation workers; validation batches (few, not augmented) are
    made in-process.
    """
    data_folder = run.preprocessed_dataset_folder / run.plans["data_identifier"]

    def factory(split: str, stage: Stage, seed: int, epoch: int):
        validation = split == "val"
        cases = run.val_cases if validation else run.train_cases
        common = dict(validation=validation, batch_size=stage.batch_size, num_workers=0 if validation else None)
        if run.kind == "expert":
            return ExpertDataLoader(data_folder, cases, run.plans, run.task, run.configuration, seed=seed,
                                    epoch=epoch, **common)
        return EnsemblerDataLoader(data_folder, cases, run.plans, run.task, run.configuration, seed=seed, epoch=epoch,
                                   patch_size=list(stage.patch_size), **common)
    return factory


def _metadata(run: RunSpec, network: dict) -> dict:
    plans, config = run.plans, run.plans["configurations"][run.configuration]
    task_plans = plans["tasks"][run.task]
    metadata = {"kind": run.kind, "dataset_name": run.dataset_name, "plans_name": run.plans_name, "task": run.task,
                "configuration": run.name, "base_configuration": run.configuration, "fold": run.fold,
                "network": network, "parametrization": task_plans["parametrization"],
                "task_plans": json.loads(json.dumps(task_plans)), "patch_size": list(config["patch_size"])}
    if run.kind == "expert":
        metadata["slice_axis"] = int(config["slice_axis"])
    else:
        metadata.update(fine_tune_shape=list(config["fine_tune_shape"]), patch_wise=bool(config.get("patch_wise")),
                        expert_slice_batch_size=int(config["expert_slice_batch_size"]),
                        ensembler_lambda=float(task_plans.get("ensembler_lambda", 1.0)))
    return metadata


def _ensembler_parts(run: RunSpec, device):
    """Frozen experts (checked to exist), the ensembler network dict and the ensembler itself."""
    specs = expert_specs(run.plans, run.configuration, run.task, run.experts)
    locations = check_experts_trained(specs, run.location)
    frozen = load_frozen_experts(specs, locations, run.plans, configuration=run.configuration, task=run.task,
                                 device=device)
    for expert in frozen:
        # each expert against ITS task's plans; one of another task's space runs converted into this one's
        record = expert.record
        expert_plans = run.plans["tasks"][record["task"]]
        parametrization, prediction = expert_plans["parametrization"], expert_plans.get("prediction", "epsilon")
        expert_prediction = record.get("prediction", "epsilon")
        if record["parametrization"] != parametrization or expert_prediction != prediction:
            raise ExpertMismatchError(f"Expert {record['name']} predicts {expert_prediction} of "
                                      f"'{record['parametrization']}' but task '{record['task']}' uses {prediction} "
                                      f"of '{parametrization}'. Fix: retrain the expert with the current plans.")
        changed = [key for key, value in record.get("space", {}).items()
                   if value is not None and expert_plans.get(key) != value]
        if changed:
            raise ExpertMismatchError(f"Expert {record['name']} was trained with " + ", ".join(
                f"{key} {record['space'][key]!r}" for key in changed) + f" but the plans of task '{record['task']}' "
                "now say " + ", ".join(f"{expert_plans.get(key)!r}" for key in changed) + ". Fix: retrain the "
                "expert with the current plans.")
    network = ensembler_network(run.plans, run.configuration, run.task, specs)
    task_plans = run.plans["tasks"][run.task]
    # what the ensembler fuses: every expert's output in this task's space
    model = Ensembler(network, [s.name for s in specs], [task_plans["parametrization"]] * len(frozen),
                      task_plans.get("ensembler_lambda", 1.0))
    return frozen, network, model


def build_trainer(run: RunSpec, options: TrainingOptions = TrainingOptions(), *, rank: int = 0, world_size: int = 1,
                  wrap_model: Callable | None = None) -> Trainer:
    """A Trainer for a resolved run: model (seeded init), objective, schedule, loaders and checkpoint metadata.

    `wrap_model(model) -> model` is where DistributedDataParallel wraps the network (after it is on `device`);
    with world_size > 1 each rank trains on its share of every stage's batch (`per_rank_schedule`).
    """
    device = check_device(options.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True     # fixed shapes per stage: let cuDNN pick its fastest kernels
    seed_everything(options.seed)
    on_resume = None
    if run.kind == "expert":
        network = network_for_task(run.plans, run.configuration, run.task)
        model, objective = build_expert(network), ExpertObjective()
    else:
        frozen, network, model = _ensembler_parts(run, device)
        objective = EnsemblerObjective(frozen, want_features=bool(network.get("feature_injection")))

        def on_resume(state):
            check_expert_hashes(state["experts"], frozen)
    metadata = _metadata(run, network)
    if run.kind == "ensembler":
        metadata["experts"] = [e.record for e in objective.experts]
    model = model.to(device)
    if wrap_model is not None:
        model = wrap_model(model)
    training = run.plans["training"][run.kind]
    schedule = per_rank_schedule(make_schedule(run.plans, run.configuration, options.num_epochs,
                                               options.iterations_per_epoch), world_size)
    return Trainer(model, objective, NoiseSchedule.from_plans(run.plans["diffusion"]), schedule,
                   options.loaders or default_loaders(run), output_folder=run.output_folder,
                   lr=float(training["lr"]), ema_decay=float(training["ema_decay"]),
                   optimizer=str(training.get("optimizer", "adam")),
                   weight_decay=float(training.get("weight_decay", 0.0)), metadata=metadata, device=device,
                   seed=options.seed, rank=rank, world_size=world_size, echo=options.echo, on_resume=on_resume,
                   prediction=run.plans["tasks"][run.task].get("prediction", "epsilon"), dtype=run.plans.get("dtype"))
