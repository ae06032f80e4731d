"""`train`: train one configuration of one task and fold, then validate it, as `diffens_train` does.

Validation samples the fold's validation cases with the predictor and scores them (workflows/validation.py), so
it lives above training and inference, which do not import each other.
"""
from __future__ import annotations

from pathlib import Path

from diffens_auto.model_folder.checkpoints import FINAL
from diffens_auto.paths import distributed_environment
from diffens_auto.training.api import train_model
from diffens_auto.training.assembly import TrainingOptions
from diffens_auto.training.errors import TrainingSetupError
from diffens_auto.training.run_spec import resolve_run, training_fold
from diffens_auto.training.trainer import LoaderFactory
from diffens_auto.workflows.validation import validate_model, validation_report


def is_main_process() -> bool:
    """False in the ranks > 0 of a torchrun job (they train, but only rank 0 validates and reports)."""
    environment = distributed_environment()
    return environment is None or environment["rank"] == 0


def check_counts(num_epochs: int | None, iterations_per_epoch: int | None, val_steps: int | None) -> None:
    """Refuse non-positive --epochs, --iterations_per_epoch and --val_steps before any work."""
    for value, flag in ((num_epochs, "--epochs"), (iterations_per_epoch, "--iterations_per_epoch")):
        if value is not None and value < 1:
            raise TrainingSetupError(f"{flag} {value}: give a positive number.")
    if val_steps is not None and val_steps < 1:
        raise TrainingSetupError(f"--val_steps {val_steps}: give at least 1.")


def train(dataset, task: str, configuration: str, fold=0, plans_name: str | None = None, *,
          continue_training: bool = False, device="cpu", num_epochs: int | None = None,
          iterations_per_epoch: int | None = None, experts: list | None = None, name: str | None = None,
          seed: int = 0, loaders: LoaderFactory | None = None, echo: bool = True, num_gpus: int = 1,
          validate: bool = True, val_steps: int | None = None, val_checkpoint: str = FINAL) -> Path:
    """Train one configuration of one task and fold, then (validate=True) validate it; return its fold folder.

    dataset: id or DatasetXXX_Name; fold: int or "all"; experts: ["TASK:CONFIG", ...] with name: a fusion
    ensembler from experts of other tasks. Results: diffens_results/DatasetXXX/TASK/CONFIG__PLANS/fold_F/, the
    validation of `val_checkpoint` in its validation/summary.json (val_steps sampling steps; default the plans'
    steps, at most 10).
    num_gpus > 1: that many data-parallel processes on this machine (`loaders`, if given, must pickle); under
    torchrun this process is one rank of the job torchrun started (leave num_gpus at 1).
    """
    check_counts(num_epochs, iterations_per_epoch, val_steps)
    run = resolve_run(dataset, task, configuration, fold, plans_name, experts=experts, name=name)
    options = TrainingOptions(device=device, num_epochs=num_epochs, iterations_per_epoch=iterations_per_epoch,
                              seed=seed, continue_training=continue_training, loaders=loaders, echo=echo)
    folder = train_model(run, options, num_gpus)
    if echo and is_main_process():
        print(f"Trained model in {folder}")
    if validate:
        validate_trained(run.dataset_name, task, run.name, run.fold, run.plans_name, checkpoint=val_checkpoint,
                         steps=val_steps, seed=seed, device=device, echo=echo)
    return folder


def validate_trained(dataset, task: str, configuration: str, fold=0, plans_name: str | None = None, *,
                     checkpoint: str = FINAL, steps: int | None = None, seed: int = 0, device="cpu",
                     echo: bool = True) -> dict | None:
    """Validate a trained configuration on the main process (diffens_train --val); None on the other ranks."""
    check_counts(None, None, steps)
    fold = training_fold(fold)
    if not is_main_process():
        return None
    summary = validate_model(dataset, task, configuration, fold, plans_name, checkpoint=checkpoint, steps=steps,
                             seed=seed, device=device, progress=echo)
    if echo:
        print(validation_report(summary))
    return summary
