"""`diffens_benchmark quality`: learning curves of a task's methods on held-out phantoms (PSNR/SSIM vs training time).

By default the paper's 4x isotropic super-resolution of FLAIR (`--task sr`); `--task mt` (T1ce -> FLAIR) and
`--task both` (T1ce and the 4x pooled FLAIR -> FLAIR) run the same learning curve with their own floor, the
inputs mapped to the target by a linear intensity fit on the training cases (inference/linear_fit.py; for both,
projected onto the measurement). On DemoBrain phantoms: training phantoms from `seed`, held-out
phantoms from `seed + TEST_SEED_OFFSET` (seeds the training never saw), planned with the tiny preset. The total
training budget (`--minutes`) is split into the points of the learning curve, 1 : 2 : 4 of it (each point trains
from scratch, so the points add up to the budget); within a point the three experts (axial, sagittal, coronal)
share `expert_share` of its time equally and the ensembler gets the rest. Iterations come from the seconds per
iteration measured first on a short run of each configuration (setup included), so a point keeps to its minutes
on any machine. At every point each method of the task's table (demo/pipeline.py TASK_METHODS: the baselines, 2D
axial, TPDM, the averages of 2 and of 3 planes, Diff-Ensembler) predicts every held-out
phantom with the plans' sampler settings; reported per method and point: mean PSNR and SSIM with their standard
errors and the paired PSNR difference to the floor (mean and standard error over the phantoms).

Outputs in the work folder: quality.json, quality_table.md, quality_curve.png. Re-running with the same work
folder resumes (finished training and predictions are kept).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from diffens_auto import paths
from diffens_auto.atomic import atomic_path, atomic_write_json, atomic_write_text
from diffens_auto.demo.dataset import DEFAULT_NOISE, make_demo_dataset, sample_demo_case, write_case
from diffens_auto.demo.pipeline import (DEMO_DATASET_ID, FLOORS, TASK_METHODS, TOSM_EXPERTS, evaluate_methods,
                                        predict_methods)
from diffens_auto.errors import DiffensError
from diffens_auto.inference.degrade_inputs import degrade_folder
from diffens_auto.inference.linear_fit import fit_linear_map
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
from diffens_auto.workflows.train import train

TEST_SEED_OFFSET = 1000
ENSEMBLER = "3d_ensembler"
TASK_TITLES = {"sr": "{f}x super-resolution of FLAIR", "mt": "translation T1ce -> FLAIR",
               "both": "T1ce and the {f}x pooled FLAIR -> FLAIR"}


class QualityBenchmarkError(DiffensError, ValueError):
    """The quality benchmark cannot run as asked (a budget too small, a work folder of other settings)."""


@dataclass(frozen=True)
class QualitySettings:
    """Sizes of one quality benchmark run (the budget itself is `minutes`, given separately)."""

    num_train_cases: int = 8
    num_test_cases: int = 8
    shape: tuple = (48, 48, 48)
    spacing: tuple = (1.5, 1.5, 1.5)
    sr_factor: int = 4
    steps: int = 20
    budget_parts: tuple = (1, 2, 4)      # the learning curve's points, as parts of the total budget
    expert_share: float = 0.7            # of a point's time, for the three experts together
    iterations_per_epoch: int = 50
    calibration_iterations: int = 20
    task: str = "sr"                     # the demo task: sr, mt (T1ce -> FLAIR) or both


SMOKE = QualitySettings(num_train_cases=3, num_test_cases=2, shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0), steps=3,
                        iterations_per_epoch=4, calibration_iterations=2)


def point_minutes(minutes: float, settings: QualitySettings) -> list[float]:
    """Training minutes of each learning-curve point: the budget split in the ratio of `budget_parts`."""
    total = sum(settings.budget_parts)
    return [minutes * part / total for part in settings.budget_parts]


def iteration_plan(minutes: float, seconds_per_iteration: dict, settings: QualitySettings) -> dict:
    """{configuration: iterations} that fill `minutes`: experts share expert_share equally, the ensembler the rest."""
    experts = [c for c in seconds_per_iteration if c != ENSEMBLER]
    plan = {}
    for configuration, seconds in seconds_per_iteration.items():
        share = settings.expert_share / len(experts) if configuration != ENSEMBLER else 1 - settings.expert_share
        plan[configuration] = round(minutes * 60 * share / max(float(seconds), 1e-9))
    return plan


def paired_statistics(values: list[float], floor: list[float]) -> dict:
    """Mean and standard error of `values` and of their paired differences to `floor` (same cases, same order)."""
    values, floor = np.asarray(values, float), np.asarray(floor, float)
    diff = values - floor
    n = len(values)

    def se(x):
        return float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "se": se(values), "minus_floor": float(diff.mean()),
            "minus_floor_se": se(diff), "num_cases": n}


def _make_cases(work: Path, settings: QualitySettings, seed: int) -> Path:
    """The training dataset in the raw folder and the held-out phantoms (another seed) with their inputs."""
    raw = paths.raw_folder()
    folder = raw / f"Dataset{DEMO_DATASET_ID}_DemoBrain"
    existing = json.loads((folder / "dataset.json").read_text()) if (folder / "dataset.json").is_file() else {}
    if existing.get("numTraining") != settings.num_train_cases:
        make_demo_dataset(raw, DEMO_DATASET_ID, num_cases=settings.num_train_cases, shape=tuple(settings.shape),
                          spacing=tuple(settings.spacing), seed=seed, sr_factor=settings.sr_factor)
    tests = work / "test_cases"
    for index in range(settings.num_test_cases):
        case = sample_demo_case(index, seed + TEST_SEED_OFFSET, tuple(settings.shape), tuple(settings.spacing),
                                DEFAULT_NOISE)
        if not (tests / "imagesTr" / f"{case.case_id}_0003.nii.gz").is_file():
            write_case(case, tests)
    return tests


def _train_point(configurations: list[str], iterations: dict, settings: QualitySettings, device) -> float:
    """Train every configuration for its iterations (experts first); returns the wall seconds it took."""
    started = time.time()
    for configuration in configurations:
        epochs = max(1, round(iterations[configuration] / settings.iterations_per_epoch))
        if configuration == ENSEMBLER:
            epochs = 2 * max(1, round(epochs / 2))      # pretraining and fine-tuning split 1 : 1 (tiny plans)
        train(DEMO_DATASET_ID, settings.task, configuration, "all", continue_training=True, device=device,
              num_epochs=epochs,
              iterations_per_epoch=settings.iterations_per_epoch, echo=False, validate=False)
    return time.time() - started


def _calibrate(work: Path, configurations: list[str], settings: QualitySettings, device) -> dict:
    """Seconds per training iteration of each configuration (a short run, setup included), saved for a re-run."""
    record = work / "calibration.json"
    if record.is_file():
        return json.loads(record.read_text())
    os.environ[paths.RESULTS_VARIABLE] = str(work / "calibration")
    seconds = {}
    for configuration in configurations:
        started = time.time()
        epochs = 2 if configuration == ENSEMBLER else 1
        train(DEMO_DATASET_ID, settings.task, configuration, "all", device=device, num_epochs=epochs,
              iterations_per_epoch=settings.calibration_iterations, echo=False, validate=False)
        seconds[configuration] = (time.time() - started) / (epochs * settings.calibration_iterations)
    atomic_write_json(seconds, record)
    return seconds


def _check_work_folder(work: Path, record: dict) -> None:
    path = work / "quality_settings.json"
    wanted = json.loads(json.dumps(record))
    if path.is_file() and json.loads(path.read_text()) != wanted:
        held = json.loads(path.read_text())
        differ = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
        raise QualityBenchmarkError(f"{work} holds a quality benchmark run with other settings or minutes "
                                    f"(differing: {', '.join(differ)}). Fix: use another --work folder, or delete it.")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, path)


def _case_metrics(evaluation: dict) -> dict:
    """{case: (psnr, ssim)} of an evaluate_folders result over the whole volume."""
    return {row["case"]: (row["psnr"], row["ssim"]) for row in evaluation["per_case"]
            if row["region"] == "all" and row["status"] == "ok"}


def _linear_fit(work: Path, plans: dict, task: str) -> dict | None:
    """The MT / both floor's linear fit on the training cases (None for sr), saved in the work folder."""
    if task == "sr":
        return None
    record = work / "linear_fit.json"
    if record.is_file():
        return json.loads(record.read_text())
    task_plans = plans["tasks"][task]
    images = paths.raw_folder() / f"Dataset{DEMO_DATASET_ID}_DemoBrain" / "imagesTr"
    channels = [*task_plans["inputs"], task_plans["target"]]
    cases = [{c: images / f"{p.name[:-len('_0000.nii.gz')]}_{c:04d}.nii.gz" for c in channels}
             for p in sorted(images.glob("*_0000.nii.gz"))]
    fit = fit_linear_map(cases, task_plans["target"], list(task_plans["inputs"]), task_plans["degradation"])
    atomic_write_json(fit, record)
    return fit


def benchmark_quality(work_folder: str | Path, minutes: float = 15.0, *, smoke: bool = False, device="cpu",
                      seed: int = 0, num_test_cases: int | None = None, task: str = "sr",
                      verbose: bool = True) -> dict:
    """Run the quality benchmark of `task` in `work_folder` with `minutes` of training in all; returns its results."""
    settings = SMOKE if smoke else QualitySettings()
    if task not in TASK_METHODS:
        raise QualityBenchmarkError(f"--task {task!r}: use one of {sorted(TASK_METHODS)}.")
    settings = replace(settings, task=task)
    if num_test_cases is not None:
        settings = replace(settings, num_test_cases=int(num_test_cases))
    if not minutes > 0:
        raise QualityBenchmarkError(f"--minutes must be positive, got {minutes}.")
    work = Path(work_folder).resolve()
    _check_work_folder(work, {**asdict(settings), "minutes": minutes, "seed": seed})
    folders = paths.use_folders(work)
    tests = _make_cases(work, settings, seed)
    plans_file = plan_and_preprocess(DEMO_DATASET_ID, preset="tiny", num_processes=1)
    plans = load_plans(plans_file.parent, plans_file.stem)
    inputs = work / "test_inputs"
    degrade_folder(tests / "imagesTr", inputs, DEMO_DATASET_ID, task, verbose=False)
    fit = _linear_fit(work, plans, task)
    configurations = list(dict.fromkeys([*plans["configurations"][ENSEMBLER]["experts"], *TOSM_EXPERTS, ENSEMBLER]))
    rates = _calibrate(work, configurations, settings, device)
    points = []
    for index, budget in enumerate(point_minutes(minutes, settings)):
        iterations = iteration_plan(budget, rates, settings)
        point = work / f"point_{index}"
        os.environ[paths.RESULTS_VARIABLE] = str(point / "results")
        seconds = _recorded_seconds(point)
        if seconds is None:
            seconds = _train_point(configurations, iterations, settings, device)
            atomic_write_json({"training_seconds": seconds}, point / "training.json")
        predict_methods(inputs, point / "predictions", plans["tasks"][task]["degradation"], steps=settings.steps,
                        device=device, seed=seed, previews=False, task=task, fit=fit)
        evaluations = evaluate_methods(tests / "imagesTr", point / "predictions", point / "evaluation", mmd=False,
                                       task=task)
        points.append({"planned_minutes": budget, "training_minutes": seconds / 60, "iterations": iterations,
                       "methods": _point_rows(evaluations, FLOORS[task])})
        if verbose:
            print(f"[diffens_benchmark quality] point {index + 1}/{len(settings.budget_parts)}: {budget:.1f} min "
                  f"planned, {seconds / 60:.1f} min trained", flush=True)
    os.environ[paths.RESULTS_VARIABLE] = str(folders[paths.RESULTS_VARIABLE])
    results = {"settings": {**asdict(settings), "minutes": minutes, "seed": seed, "device": str(device)},
               "seconds_per_iteration": rates, "linear_fit": fit, "points": points}
    atomic_write_json(results, work / "quality.json")
    atomic_write_text(format_quality_table(results), work / "quality_table.md")
    plot_learning_curves(results, work / "quality_curve.png")
    return results


def _recorded_seconds(point: Path) -> float | None:
    record = point / "training.json"
    return float(json.loads(record.read_text())["training_seconds"]) if record.is_file() else None


def _point_rows(evaluations: dict, floor_name: str) -> dict:
    """{method: {"psnr": paired_statistics, "ssim": paired_statistics}} against the floor, over the same cases."""
    metrics = {name: _case_metrics(result) for name, result in evaluations.items()}
    cases = sorted(set.intersection(*(set(m) for m in metrics.values())))
    floor = metrics[floor_name]
    return {name: {"psnr": paired_statistics([m[c][0] for c in cases], [floor[c][0] for c in cases]),
                   "ssim": paired_statistics([m[c][1] for c in cases], [floor[c][1] for c in cases])}
            for name, m in metrics.items()}


def _title(settings: dict) -> str:
    task = settings.get("task", "sr")
    return f"{task}: " + TASK_TITLES[task].format(f=settings["sr_factor"])


def format_quality_table(results: dict) -> str:
    """The learning curves as a markdown table: one row per method and point."""
    settings = results["settings"]
    task = settings.get("task", "sr")
    lines = [f"{_title(settings)}, {settings['num_test_cases']} held-out phantoms "
             f"(seed {settings['seed'] + TEST_SEED_OFFSET}), {settings['steps']} sampling steps, "
             f"{settings['minutes']:g} training minutes in all", "",
             "| method | training min | PSNR (dB) ± SE | Δ floor (dB) ± SE | SSIM ± SE | Δ floor SSIM ± SE |",
             "|---|---|---|---|---|---|"]
    for method in TASK_METHODS[task]:
        for point in results["points"]:
            row = point["methods"][method.name]
            p, s = row["psnr"], row["ssim"]
            lines.append(f"| {method.name} | {point['training_minutes']:.1f} | {p['mean']:.2f} ± {p['se']:.2f} | "
                         f"{p['minus_floor']:+.2f} ± {p['minus_floor_se']:.2f} | {s['mean']:.4f} ± {s['se']:.4f} | "
                         f"{s['minus_floor']:+.4f} ± {s['minus_floor_se']:.4f} |")
    return "\n".join(lines) + "\n"


def plot_learning_curves(results: dict, output: Path) -> Path:
    """PSNR (mean ± SE over the phantoms) against training minutes, one line per method, written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    minutes = [p["training_minutes"] for p in results["points"]]
    for method in TASK_METHODS[results["settings"].get("task", "sr")]:
        for axis, metric in zip(axes, ("psnr", "ssim")):
            means = [p["methods"][method.name][metric]["mean"] for p in results["points"]]
            errors = [p["methods"][method.name][metric]["se"] for p in results["points"]]
            style = "--" if method.configuration is None else "-"
            axis.errorbar(minutes, means, yerr=errors, fmt=style, marker="o", capsize=3, label=method.name)
    for axis, label in zip(axes, ("PSNR (dB)", "SSIM")):
        axis.set_xlabel("training minutes (all configurations)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"diffens_benchmark quality: {_title(results['settings'])}, "
                    f"{results['settings']['num_test_cases']} held-out phantoms")
    figure.tight_layout()
    output = Path(output)
    with atomic_path(output) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return output
