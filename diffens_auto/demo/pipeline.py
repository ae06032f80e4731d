"""diffens_demo: the whole pipeline on synthetic brain phantoms, ending in a table like the paper's Table 1.

Steps (each one the API of a command, so the demo is what a user would type):
  1. dataset      make_demo_dataset (training cases) + held-out test cases rendered the same way
  2. plan         diffens_plan_and_preprocess -pl tiny --verify_dataset_integrity
  3. train        diffens_train ... 2d_axial / 2d_sagittal / 3d_ensembler -f all (briefly)
  4. inputs       diffens_degrade: the test cases' FLAIR pooled by the demo's factor, with geometry
  5. predict      trilinear interpolation, with and without the exact consistency projection (the projected one is
                  the floor every diffusion row must beat), then diffens_predict -c 2d_axial | tpdm | average (the
                  ensembler's two experts, and all three planes as TOSM) | 3d_ensembler, with the same plans sampler
                  settings, seed and steps, previews on
  6. evaluate     diffens_evaluate against the held-out high-resolution FLAIR
  7. report       the table (printed, demo_table.md, demo_summary.json) and comparison PNGs per test case

Every step resumes: a re-run with the same work folder skips finished training and predictions.
`smoke` runs the same code on smaller volumes with a few iterations (CI); the full demo's sizes are chosen so
that it finishes within 15 minutes on 2 CPU cores. Its setting rule, fixed before measuring: the low-resolution
input keeps at least 16^3 voxels of the field of view, so that it holds structure worth recovering (4x of 48^3
leaves 12^3; the full demo pools 2x, 24^3). `LEGACY` is the earlier 48^3 / 4x setting, kept to report its rows.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from diffens_auto import paths
from diffens_auto.atomic import atomic_write_json, atomic_write_text
from diffens_auto.demo.dataset import (DEFAULT_NOISE, dataset_folder_name, make_demo_dataset, sample_demo_case,
                                       write_case)
from diffens_auto.demo.report import comparison_previews, results_table
from diffens_auto.errors import DiffensError
from diffens_auto.evaluation import evaluate_folders
from diffens_auto.inference.degrade_inputs import degrade_folder
from diffens_auto.inference.interpolation import trilinear_folder
from diffens_auto.inference.linear_fit import linear_map_folder
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
from diffens_auto.workflows.train import train

DEMO_DATASET_ID = 900
TASK = "sr"
TOSM_EXPERTS = ("2d_axial", "2d_sagittal", "2d_coronal")


@dataclass(frozen=True)
class Method:
    """One row of the demo's table: diffens_predict -c `configuration` (--experts), or a baseline without a model."""

    name: str
    folder: str                           # predictions/<folder>, evaluation/<folder>.json
    configuration: str | None = None      # None: the baseline
    experts: tuple[str, ...] | None = None
    project: bool = False                 # baselines: the exact consistency projection afterwards
    baseline: str = "trilinear"           # "trilinear" (SR) or "linear_fit" (the inputs' linear fit, MT / both)


DIFFUSION_METHODS = (Method("2D axial (Palette)", "2d_axial", "2d_axial"),
                     Method("TPDM", "tpdm", "tpdm"),
                     Method("Average of 2 (axial, sagittal)", "average", "average"),
                     Method("Average of 3 planes (TOSM)", "average_3", "average", TOSM_EXPERTS),
                     Method("Diff-Ensembler", "3d_ensembler", "3d_ensembler"))
# in the order of the paper's Table 1, after the two interpolation rows
METHODS = (Method("Trilinear", "trilinear"),
           Method("Trilinear + projection (floor)", "trilinear_projected", project=True),
           *DIFFUSION_METHODS)
# each task's rows: the floor is the best its inputs give without a learned prior (linear_fit.py)
TASK_METHODS = {
    "sr": METHODS,
    "mt": (Method("Linear fit (floor)", "linear_fit", baseline="linear_fit"), *DIFFUSION_METHODS),
    "both": (Method("Linear fit", "linear_fit", baseline="linear_fit"),
             Method("Linear fit + projection (floor)", "linear_fit_projected", project=True, baseline="linear_fit"),
             *DIFFUSION_METHODS),
}
FLOORS = {"sr": "Trilinear + projection (floor)", "mt": "Linear fit (floor)", "both": "Linear fit + projection (floor)"}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run."""

    num_train_cases: int
    num_test_cases: int
    shape: tuple
    spacing: tuple
    sr_factor: int                # average pooling per axis of the sr task
    expert_epochs: int
    expert_iterations: int        # per epoch
    ensembler_epochs: int         # split pretrain : fine-tune as the plans say (tiny: 1 : 1)
    ensembler_iterations: int     # per epoch
    steps: int


FULL = DemoSettings(8, 2, (48, 48, 48), (1.5, 1.5, 1.5), sr_factor=2, expert_epochs=10, expert_iterations=200,
                    ensembler_epochs=10, ensembler_iterations=25, steps=20)
LEGACY = DemoSettings(8, 2, (48, 48, 48), (1.5, 1.5, 1.5), sr_factor=4, expert_epochs=10, expert_iterations=200,
                      ensembler_epochs=10, ensembler_iterations=25, steps=20)
SMOKE = DemoSettings(3, 1, (32, 32, 32), (2.0, 2.0, 2.0), sr_factor=2, expert_epochs=1, expert_iterations=4,
                     ensembler_epochs=2, ensembler_iterations=2, steps=3)
SETTINGS = {"full": FULL, "legacy": LEGACY, "smoke": SMOKE}


class DemoSetupError(DiffensError, ValueError):
    """The work folder holds a demo run with other settings (e.g. a smoke run)."""


def check_work_folder(work: Path, settings, seed: int, *, known: dict | None = None, demo: str = "sr") -> None:
    """Record the run's settings in the work folder; refuse a folder whose earlier run used other settings.

    `known`: the demo's named settings (default SETTINGS), to name an earlier run's; `demo`: which demo ("sr", or
    "recon", which the record names, so neither demo resumes in the other's folder)."""
    extra = {} if demo == "sr" else {"demo": demo}
    record = {**asdict(settings), "seed": seed, **extra}
    path = work / "demo_settings.json"
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if earlier != json.loads(json.dumps(record)):
            kind = next((name for name, s in (SETTINGS if known is None else known).items()
                         if json.loads(json.dumps({**asdict(s), "seed": earlier.get("seed"), **extra})) == earlier),
                        "another")
            raise DemoSetupError(f"{work} holds a diffens_demo run of the {kind!r} setting (or another version's), "
                                 "not of this one. Fix: use another -o, or delete the folder.")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, path)


class StageClock:
    """Seconds per demo step, printed as they finish."""

    def __init__(self, verbose: bool):
        self.started, self.last, self.steps, self.verbose = time.time(), time.time(), {}, verbose

    def done(self, name: str) -> None:
        """Record (and print) the seconds since the last step as step `name`."""
        now = time.time()
        self.steps[name] = round(now - self.last, 1)
        self.last = now
        if self.verbose:
            print(f"[diffens_demo] {name}: {self.steps[name]:.1f} s (total {now - self.started:.0f} s)", flush=True)


def make_test_cases(folder: Path, settings: DemoSettings, seed: int = 0) -> Path:
    """Render the held-out test cases into folder/imagesTr and labelsTr.

    Indices start two after the training cases so that the full demo's first test case is an oblique one.
    """
    first = settings.num_train_cases + 2
    for index in range(first, first + settings.num_test_cases):
        case = sample_demo_case(index, seed, tuple(settings.shape), tuple(settings.spacing), DEFAULT_NOISE)
        if not (folder / "imagesTr" / f"{case.case_id}_0003.nii.gz").is_file():
            write_case(case, folder)
    return folder


def _dataset(work: Path, raw: Path, settings: DemoSettings, seed: int) -> Path:
    folder = raw / dataset_folder_name(DEMO_DATASET_ID)
    existing = json.loads((folder / "dataset.json").read_text()) if (folder / "dataset.json").is_file() else {}
    if existing.get("numTraining") != settings.num_train_cases:
        make_demo_dataset(raw, DEMO_DATASET_ID, num_cases=settings.num_train_cases, shape=tuple(settings.shape),
                          spacing=tuple(settings.spacing), seed=seed, sr_factor=settings.sr_factor)
    make_test_cases(work / "test_cases", settings, seed)
    return folder


def _train(settings: DemoSettings, plans: dict, device, verbose: bool) -> list[str]:
    ensembler = "3d_ensembler"
    experts = list(dict.fromkeys([*plans["configurations"][ensembler]["experts"], *TOSM_EXPERTS]))
    for configuration in experts:
        train(DEMO_DATASET_ID, TASK, configuration, "all", continue_training=True, device=device,
              num_epochs=settings.expert_epochs, iterations_per_epoch=settings.expert_iterations, echo=verbose,
              validate=False)
    train(DEMO_DATASET_ID, TASK, ensembler, "all", continue_training=True, device=device,
          num_epochs=settings.ensembler_epochs, iterations_per_epoch=settings.ensembler_iterations, echo=verbose,
          validate=False)
    return experts + [ensembler]


def _previous_seconds(work: Path) -> dict:
    """Seconds per volume of an earlier run of this demo (a resumed run skips predictions it already has)."""
    path = work / "demo_summary.json"
    if not path.is_file():
        return {}
    return {row["method"]: row["seconds_per_volume"] for row in json.loads(path.read_text())["table"]}


def _baseline(method: Method, inputs: Path, output: Path, degradation: dict | None, fit: dict | None) -> int:
    """Write a baseline's outputs of every case in `inputs`; returns the number of cases."""
    if method.baseline == "trilinear":
        files = {p.name[: -len("_0003.nii.gz")]: p for p in sorted(inputs.glob("*_0003.nii.gz"))}
        trilinear_folder(files, output, degradation, project=method.project)
        return len(files)
    if fit is None:
        raise DemoSetupError(f"{method.name} needs the linear fit of the training cases (fit_linear_map).")
    channels = [*fit["inputs"], *([fit["target"]] if fit["degradation"] else [])]
    first = f"_{channels[0]:04d}.nii.gz"
    cases = {p.name[: -len(first)]: {c: inputs / p.name.replace(first, f"_{c:04d}.nii.gz") for c in channels}
             for p in sorted(inputs.glob(f"*{first}"))}
    linear_map_folder(cases, output, fit, project=method.project)
    return len(cases)


def predict_methods(inputs: Path, predictions: Path, degradation: dict | None, *, steps: int, device, seed: int,
                    previous: dict | None = None, previews: bool = True, task: str = TASK,
                    fit: dict | None = None) -> dict:
    """Every method of `task` on the prediction inputs in `inputs` into predictions/<method.folder>; returns
    {method name: mean seconds per volume} (from `previous` for a method that had nothing left to do).

    `fit` (fit_linear_map of the training cases) is what the MT / both floors need."""
    seconds, previous = {}, previous or {}
    for method in TASK_METHODS[task]:
        output = predictions / method.folder
        if method.configuration is None:
            started = time.time()
            count = _baseline(method, inputs, output, degradation, fit)
            seconds[method.name] = (time.time() - started) / max(count, 1)
            continue
        predictor = DiffensPredictor(steps=steps, seed=seed, device=device, progress=False, previews=previews)
        predictor.initialize_from_trained_model(DEMO_DATASET_ID, task, method.configuration, fold="all",
                                                experts=list(method.experts) if method.experts else None)
        summary = predictor.predict_from_files(inputs, output, continue_prediction=True)
        done = [row for row in summary["cases"] if row["status"] == "done"]
        failed = [row for row in summary["cases"] if row["status"] == "failed"]
        if failed:
            raise RuntimeError(f"diffens_demo: {method.name} failed on {[r['case'] for r in failed]}: "
                               f"{failed[0]['message']}")
        seconds[method.name] = sum(r["seconds"] for r in done) / len(done) if done else previous.get(method.name)
    return seconds


def evaluate_methods(references: Path, predictions: Path, evaluations: Path, *, mmd: bool = True,
                     task: str = TASK) -> dict:
    """evaluate_folders of every method's predictions/<folder> against the reference FLAIR (channel 3) files."""
    return {method.name: evaluate_folders(references, predictions / method.folder,
                                          output_file=evaluations / f"{method.folder}.json", ref_channel=3,
                                          num_processes=1, mmd=mmd, verbose=False)
            for method in TASK_METHODS[task]}


def run_demo(work_folder: str | Path, *, smoke: bool = False, setting: str = "full", num_processes: int = 2,
             device="cpu", seed: int = 0, verbose: bool = True) -> dict:
    """Run the demo in `work_folder` (diffens_raw/preprocessed/results inside it); returns its summary.

    `setting`: "full" (the default), "legacy" (the earlier 48^3 / 4x rows) or "smoke" (what smoke=True means).
    """
    setting = "smoke" if smoke else setting
    if setting not in SETTINGS:
        raise DemoSetupError(f"Unknown demo setting {setting!r}. Fix: use one of {sorted(SETTINGS)}.")
    settings, smoke = SETTINGS[setting], setting == "smoke"
    work = Path(work_folder).resolve()
    check_work_folder(work, settings, seed)
    folders = paths.use_folders(work)
    clock = StageClock(verbose)
    _dataset(work, folders[paths.RAW_VARIABLE], settings, seed)
    clock.done(f"dataset ({settings.num_train_cases} training + {settings.num_test_cases} test phantoms, "
               f"{list(settings.shape)} voxels)")
    plan_and_preprocess(DEMO_DATASET_ID, preset="tiny", num_processes=num_processes, verify_integrity=True)
    plans = load_plans(paths.preprocessed_folder() / f"Dataset{DEMO_DATASET_ID}_DemoBrain", "diffensPlans_tiny")
    clock.done("plan and preprocess (tiny preset)")
    trained = _train(settings, plans, device, verbose and not smoke)
    clock.done(f"training {', '.join(trained)}")
    inputs = work / "test_inputs"
    degrade_folder(work / "test_cases" / "imagesTr", inputs, DEMO_DATASET_ID, TASK, verbose=False)
    clock.done(f"degraded test inputs (FLAIR pooled {settings.sr_factor}x per axis)")
    seconds = predict_methods(inputs, work / "predictions", plans["tasks"][TASK]["degradation"], steps=settings.steps,
                              device=device, seed=seed, previous=_previous_seconds(work))
    clock.done(f"prediction ({settings.steps} steps, {len(METHODS) - 2} strategies + trilinear with and without "
               "projection)")
    evaluations = evaluate_methods(work / "test_cases" / "imagesTr", work / "predictions", work / "evaluation")
    table = results_table(evaluations, seconds)
    previews = comparison_previews(work, [(m.name, m.folder) for m in METHODS], settings.sr_factor)
    clock.done("evaluation")
    sampler = str(plans["diffusion"].get("sampler", "ddim"))
    summary = {"settings": {**asdict(settings), "setting": setting, "smoke": smoke, "device": str(device),
                            "seed": seed, "sampler": sampler},
               "table": table, "seconds_per_step": clock.steps, "total_seconds": round(time.time() - clock.started, 1),
               "work_folder": str(work), "previews": [str(p) for p in previews]}
    atomic_write_json(summary, work / "demo_summary.json")
    atomic_write_text(format_table(table, settings, smoke, sampler), work / "demo_table.md")
    return summary


def format_table(table: list[dict], settings: DemoSettings, smoke: bool, sampler: str = "ddpm") -> str:
    """The results as a markdown table (PSNR/SSIM as the paper's Table 1, plus MAE, MMD² and time)."""
    lines = [f"{settings.sr_factor}x super-resolution of FLAIR, {settings.num_test_cases} held-out phantom(s), "
             f"{settings.steps} {sampler.upper()} steps{' (smoke run: meaningless numbers)' if smoke else ''}", "",
             "| method | PSNR (dB) | SSIM | MAE | MMD² | s / volume |", "|---|---|---|---|---|---|"]
    for row in table:
        cells = [row["method"]] + [_cell(row[k], d) for k, d in (("psnr", 2), ("ssim", 4), ("mae", 2),
                                                                 ("mmd2", 4), ("seconds_per_volume", 1))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
