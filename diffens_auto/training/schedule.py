"""The epoch schedule of a training run: its stages, iterations per epoch, validation batches, checkpoints.

An expert trains in one stage ("train") on its slices; an ensembler pretrains on small patches, then fine-tunes
on the whole crop or its largest fitting patch (Diff-Ensembler Alg. 1: "pretrain", "finetune"). With several
data-parallel ranks each stage's batch is split evenly over them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from diffens_auto.training import distributed
from diffens_auto.training.errors import TrainingSetupError


@dataclass(frozen=True)
class Stage:
    """A run of epochs on one patch shape: "train" (experts), "pretrain" / "finetune" (ensembler, Alg. 1)."""

    name: str
    num_epochs: int
    patch_size: tuple
    batch_size: int


@dataclass(frozen=True)
class EpochSchedule:
    """Stages in order, iterations per epoch, validation batches per epoch and the checkpoint interval."""

    stages: tuple
    iterations_per_epoch: int
    val_iterations: int
    checkpoint_every: int
    val_stage: Stage          # validation always on this stage's shape, so its loss is comparable across epochs

    @property
    def num_epochs(self) -> int:
        return sum(s.num_epochs for s in self.stages)

    def stage_at(self, epoch: int) -> Stage:
        for stage in self.stages:
            if epoch < stage.num_epochs:
                return stage
            epoch -= stage.num_epochs
        return self.stages[-1]


def make_schedule(plans: dict, configuration: str, num_epochs: int | None = None,
                  iterations_per_epoch: int | None = None) -> EpochSchedule:
    """The plans' training schedule, with --epochs / --iterations_per_epoch overrides.

    An ensembler's --epochs N keeps the plans' pretrain : fine-tune proportion (N pretrain / total, rounded down).
    """
    config = plans["configurations"][configuration]
    kind = config["kind"]
    training = plans["training"][kind]
    iterations = int(iterations_per_epoch or training["iterations_per_epoch"])
    val_iterations, every = int(training["val_iterations"]), int(training["checkpoint_every"])
    if kind == "expert":
        epochs = num_epochs if num_epochs is not None else training["num_epochs"]
        stage = Stage("train", int(epochs), tuple(config["patch_size"]),
                      int(config["batch_size"]))
        return EpochSchedule((stage,), iterations, val_iterations, every, stage)
    pretrain, finetune = int(training["pretrain_epochs"]), int(training["finetune_epochs"])
    if num_epochs is not None:
        pretrain, finetune = num_epochs * pretrain // max(pretrain + finetune, 1), num_epochs
        finetune -= pretrain
    # fine_tune_shape is the whole crop, or (patch_wise plans) the largest patch that fits the memory budget
    fine = Stage("finetune", finetune, tuple(config["fine_tune_shape"]), int(config["batch_size"]))
    stages = [Stage("pretrain", pretrain, tuple(config["patch_size"]), int(config["batch_size"])), fine]
    stages = tuple(s for s in stages if s.num_epochs > 0) or (fine,)
    return EpochSchedule(stages, iterations, val_iterations, every, fine)


def per_rank_schedule(schedule: EpochSchedule, world_size: int) -> EpochSchedule:
    """The schedule one of `world_size` ranks trains: each training stage's (global) batch split evenly.

    Validation keeps the global batch: the ranks share out its batches (Trainer.validation_loss).
    """
    if world_size == 1:
        return schedule
    try:
        stages = tuple(dataclasses.replace(s, batch_size=distributed.per_rank_batch_size(
            s.batch_size, world_size, f"stage '{s.name}'")) for s in schedule.stages)
    except distributed.DistributedSetupError as e:
        raise TrainingSetupError(str(e)) from None
    return dataclasses.replace(schedule, stages=stages)
