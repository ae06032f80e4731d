"""`train_model`: train one configuration of one task and fold, in this process or as data-parallel ranks.

The `diffens_train` command also validates the trained model afterwards; `diffens_auto.workflows.train` is the API
that does both (validation samples with the predictor, which training does not import).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from diffens_auto.model_folder.files import write_model_files
from diffens_auto.training import distributed
from diffens_auto.training.assembly import TrainingOptions, build_trainer
from diffens_auto.training.errors import TrainingSetupError
from diffens_auto.training.run_spec import RunSpec, check_device
from diffens_auto.training.schedule import make_schedule, per_rank_schedule


def train_model(run: RunSpec, options: TrainingOptions = TrainingOptions(), num_gpus: int = 1) -> Path:
    """Train a resolved run (`resolve_run`); return its fold folder.

    num_gpus > 1: that many data-parallel processes on this machine (`options.loaders`, if given, must pickle);
    under torchrun this process is one rank of the job torchrun started (leave num_gpus at 1).
    """
    try:
        torchrun = distributed.torchrun_context(options.device)
    except distributed.DistributedSetupError as e:
        raise TrainingSetupError(str(e)) from None
    if torchrun is None and num_gpus == 1:
        return _train_rank(distributed.RankContext(0, 1, 0, torch.device(options.device)), run, options)
    if torchrun is not None and num_gpus != 1:
        raise TrainingSetupError(f"-num_gpus {num_gpus} under torchrun: the processes are torchrun's "
                                 "(--nnodes, --nproc_per_node); leave -num_gpus out.")
    world_size = torchrun.world_size if torchrun is not None else num_gpus
    check_data_parallel(run, options, world_size, on_this_machine=torchrun is None)
    distributed.launch(_train_rank, num_gpus, options.device, run, options)
    return run.output_folder


def check_data_parallel(run: RunSpec, options: TrainingOptions, world_size: int, on_this_machine: bool = True) -> None:
    """Refuse a data-parallel request before any process starts (device, process count, batch split)."""
    try:
        distributed.check_world(world_size, check_device(options.device), on_this_machine)
    except distributed.DistributedSetupError as e:
        raise TrainingSetupError(str(e)) from None
    per_rank_schedule(make_schedule(run.plans, run.configuration, options.num_epochs, options.iterations_per_epoch),
                      world_size)


def _train_rank(context: distributed.RankContext, run: RunSpec, options: TrainingOptions) -> Path:
    """One rank's training (all of it in a single process); module-level so that spawned ranks can import it."""
    trainer = build_trainer(run, dataclasses.replace(options, device=context.device), rank=context.rank,
                            world_size=context.world_size, wrap_model=context.wrap)
    if context.rank == 0:
        write_model_files(run.location.model_folder, run.plans, run.preprocessed_dataset_folder)
    return trainer.fit(options.continue_training)
