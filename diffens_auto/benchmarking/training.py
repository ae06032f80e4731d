"""`diffens_benchmark training`: training iterations per second, real loader and augmentation vs pre-loaded tensors.

On the tiny plan of a small demo dataset built in a work folder (default: a temporary one), for an expert
(`2d_axial`) and the ensembler (`3d_ensembler`, its pretraining patch and its fine-tune shape), it times
`iterations` training steps (Trainer.step: forward, loss, backward, Adam, EMA; after one warm-up step) fed by

    workers   the real loader and augmentation with the configured batchgenerators workers (diffens_n_proc_DA),
    0 workers the real loader in the training process,
    preloaded one fixed batch held in memory (the step alone),

and, as a fourth figure, how many batches per second the in-process loader makes without training ("loader
alone"). The ensembler needs trained experts: the two it fuses are trained for one iteration first (their
weights do not change the timing).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from diffens_auto import paths
from diffens_auto.demo.dataset import make_demo_dataset
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.training.assembly import TrainingOptions, build_trainer
from diffens_auto.training.data_loading import EnsemblerDataLoader, ExpertDataLoader
from diffens_auto.training.run_spec import resolve_run
from diffens_auto.training.trainer import close_loader
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
from diffens_auto.workflows.train import train

DATASET_ID = 900
TASK = "sr"
CONFIGURATIONS = ("2d_axial", "3d_ensembler")
MODES = ("workers", "0 workers", "preloaded")


def prepare_demo(folder: str | Path, num_cases: int = 4, shape: Sequence[int] = (48, 48, 48),
                 spacing: Sequence[float] = (1.5, 1.5, 1.5)) -> dict:
    """Point the diffens_* folders at `folder`, build the demo dataset there, plan it (tiny) and preprocess it."""
    folders = paths.use_folders(folder)
    make_demo_dataset(folders[paths.RAW_VARIABLE], dataset_id=DATASET_ID, num_cases=num_cases, shape=tuple(shape),
                      spacing=tuple(spacing))
    plans_file = plan_and_preprocess(DATASET_ID, preset="tiny", num_processes=1)
    return load_plans(plans_file.parent, plans_file.stem)


def train_experts_briefly(plans: dict, configuration: str, seed: int = 0) -> None:
    """Give the ensembler's experts a checkpoint_final.pth (one iteration each)."""
    for expert in plans["configurations"][configuration]["experts"]:
        train(DATASET_ID, TASK, expert, plans_name=plans["plans_name"], num_epochs=1, iterations_per_epoch=1,
              seed=seed, echo=False, validate=False)


def make_loader(run, stage, num_workers: int, seed: int = 0):
    """The real training loader of a run for one stage (augmentation on) with `num_workers` workers."""
    data_folder = run.preprocessed_dataset_folder / run.plans["data_identifier"]
    common = dict(batch_size=stage.batch_size, num_workers=num_workers)
    if run.kind == "expert":
        return ExpertDataLoader(data_folder, run.train_cases, run.plans, run.task, run.configuration, seed=seed,
                                epoch=0, **common)
    return EnsemblerDataLoader(data_folder, run.train_cases, run.plans, run.task, run.configuration, seed=seed,
                               epoch=0, patch_size=list(stage.patch_size), **common)


def iterations_per_second(trainer, batches: Iterator[dict], iterations: int) -> float:
    """Training steps per second on batches from `batches`, after one warm-up step (worker start, allocations)."""
    generator = torch.Generator().manual_seed(0)

    def one_step():
        batch = trainer.to_device(next(batches))
        trainer.step(batch, *trainer.draw_t_and_noise(batch["y0"], generator))   # float(loss) waits for the device

    one_step()
    started = time.perf_counter()
    for _ in range(iterations):
        one_step()
    return iterations / (time.perf_counter() - started)


def batches_per_second(loader, iterations: int) -> float:
    """Batches per second a loader makes on its own (after one warm-up batch)."""
    next(loader)
    started = time.perf_counter()
    for _ in range(iterations):
        next(loader)
    return iterations / (time.perf_counter() - started)


def repeat(batch: dict) -> Iterator[dict]:
    while True:
        yield batch


def benchmark_stage(trainer, run, stage, iterations: int, workers: int) -> dict:
    """The four figures of one (configuration, stage)."""
    figures = {"configuration": run.configuration, "stage": stage.name, "batch_size": stage.batch_size,
               "patch_size": list(stage.patch_size)}
    for mode, num_workers in (("workers", workers), ("0 workers", 0)):
        loader = make_loader(run, stage, num_workers)
        try:
            figures[mode] = iterations_per_second(trainer, loader, iterations)
        finally:
            close_loader(loader)
    loader = make_loader(run, stage, 0)
    fixed = next(loader)
    figures["preloaded"] = iterations_per_second(trainer, repeat(fixed), iterations)
    figures["loader alone"] = batches_per_second(loader, iterations)
    return figures


def benchmark_training(iterations: int = 10, folder: str | Path | None = None, *, num_cases: int = 4,
                       shape: Sequence[int] = (48, 48, 48), spacing: Sequence[float] = (1.5, 1.5, 1.5),
                       configurations: Sequence[str] = CONFIGURATIONS, device: str = "cpu", seed: int = 0) -> dict:
    """Build the demo workspace in `folder` (default: a temporary folder, removed afterwards) and time training.

    Note: this points the diffens_raw / _preprocessed / _results variables of this process at the work folder.
    """
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="diffens_benchmark_training_") as tmp:
            return benchmark_training(iterations, tmp, num_cases=num_cases, shape=shape, spacing=spacing,
                                      configurations=configurations, device=device, seed=seed)
    plans = prepare_demo(folder, num_cases, shape, spacing)
    workers = paths.augmentation_workers()
    results = {"iterations": iterations, "workers": workers, "device": device, "threads": torch.get_num_threads(),
               "num_cases": num_cases, "crop_size": list(plans["crop_size"]), "rows": []}
    for configuration in configurations:
        if plans["configurations"][configuration]["kind"] == "ensembler":
            train_experts_briefly(plans, configuration, seed)
        run = resolve_run(DATASET_ID, TASK, configuration, plans_name=plans["plans_name"])
        trainer = build_trainer(run, TrainingOptions(device=device, seed=seed, echo=False))
        for stage in trainer.schedule.stages:
            results["rows"].append(benchmark_stage(trainer, run, stage, iterations, workers))
    return results


def format_training_report(results: dict) -> str:
    """Render benchmark_training's figures as a plain-text table (iterations per second)."""
    workers = results["workers"]
    lines = [f"diffens_benchmark training: tiny plan, demo dataset ({results['num_cases']} cases, crop "
             f"{'x'.join(map(str, results['crop_size']))}), task {TASK}, device {results['device']}, "
             f"{results['threads']} torch thread(s), {results['iterations']} timed iterations after 1 warm-up",
             f"{'configuration':<16}{'stage':<10}{'batch':>6}{'patch':>12}"
             f"{f'{workers} workers':>12}{'0 workers':>12}{'preloaded':>12}{'loader alone':>14}"
             f"{'preloaded/real':>16}"]
    for r in results["rows"]:
        best_real = max(r["workers"], r["0 workers"])
        lines.append(f"{r['configuration']:<16}{r['stage']:<10}{r['batch_size']:>6}"
                     f"{'x'.join(map(str, r['patch_size'])):>12}{r['workers']:>12.2f}{r['0 workers']:>12.2f}"
                     f"{r['preloaded']:>12.2f}{r['loader alone']:>14.2f}{r['preloaded'] / best_real:>15.2f}x")
    lines.append("figures: training iterations (or, loader alone, batches) per second; preloaded/real: preloaded "
                 "over the faster real-loader figure")
    return "\n".join(lines)
