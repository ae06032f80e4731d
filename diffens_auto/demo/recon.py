"""diffens_demo --recon: MRI reconstruction from 8x undersampled k-space, with a prior in and out of distribution.

Steps (each one the API of a command, so the demo is what a user would type):
  1. datasets   diffens_make_demo_dataset --kind ellipses (901) and --kind brain (900), each given one task
                "recon": its T1 undersampled 8x by one 2D Poisson-disc mask for every axial slice (`slice_axis` 2)
  2. plan       diffens_plan_and_preprocess -pl tiny --verify_dataset_integrity, both datasets
  3. train      diffens_train 901 recon 2d_axial -f all and diffens_train 900 recon 2d_axial -f all (briefly): the
                expert whose slices the mask separates into, one per dataset
  4. inputs     diffens_degrade -d 900 -t recon of held-out brain phantoms (drawn from seed 1000 + seed, so their
                anatomy is one training never saw) and, in a folder of its own, of nibabel's `anatomical.nii`, a real
                T1 scan that is out of distribution for both priors (`write_real_case`)
  5. predict    diffens_predict -c zero_filled (|A⁺y|), then DDS with the ellipsoid prior (-d 901: out of
                distribution) and with the brain prior (-d 900: in distribution), the same steps and seed
  6. evaluate   diffens_evaluate -ref BUNDLES: the references diffens_degrade wrote beside the bundles
  7. report     the table (printed, demo_table.md, demo_summary.json) with the acceptance lines, and comparison PNGs

A prior of one dataset reconstructs another dataset's bundles: a recon model (-d, -t) brings the prior, the plans'
percentiles of the scale and the dds sampling settings, while the bundle brings its operator (mask, FFT axes) and
grid (inference/recon_prediction.py). So the ellipsoid prior reconstructs the brain task's bundles as they are.

Every step resumes: a re-run with the same work folder skips finished training and predictions. `smoke` runs the
same code on 24^3 phantoms with a few iterations and 3 steps (CI). The full setting is sized, not calibrated, to
finish within 15 minutes on 2 CPU cores (documentation/benchmarks.md has the estimate and the runs).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from diffens_auto import paths
from diffens_auto.atomic import atomic_write_json, atomic_write_text
from diffens_auto.demo.dataset import make_demo_dataset, sample_demo_case, write_case
from diffens_auto.demo.pipeline import DemoSetupError, StageClock, check_work_folder
from diffens_auto.demo.recon_report import (IN_DISTRIBUTION, OUT_OF_DISTRIBUTION, PHANTOMS, REAL, ZERO_FILLED,
                                            acceptance, format_recon_table, recon_previews, recon_rows)
from diffens_auto.evaluation import evaluate_folders
from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference.degrade_inputs import degrade_folder
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.recon_prediction import zero_filled_from_files
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
from diffens_auto.workflows.train import train

ELLIPSES_ID, BRAIN_ID = 901, 900
DATASET_NAMES = {ELLIPSES_ID: "Dataset901_DemoEllipses", BRAIN_ID: "Dataset900_DemoBrain"}
KINDS = {ELLIPSES_ID: "ellipses", BRAIN_ID: "brain"}
TASK = "recon"
# T1 in both: the ellipsoid dataset's only channel, and the contrast of the real scan
TARGET = "T1"
# acs 6: 36 of the 288 samples an 8x mask of a 48 x 48 slice keeps; the default 12 would spend half of them on the
# centre and leave 6.7 % of the outer k-space, where DDS then gained at most 1 dB (documentation/benchmarks.md)
KSPACE = {"type": "kspace", "mask": "poisson", "acceleration": 8, "acs": 6, "slice_axis": 2}
# noise-free phantoms and measurements: the references are the objects themselves
NOISE = 0.0
TEST_SEED_OFFSET = 1000
REAL_CASE = "NibabelAnatomical"


@dataclass(frozen=True)
class ReconMethod:
    """One row of the recon table: the zero-filled baseline (prior None) or DDS with the prior of a dataset id."""

    name: str
    folder: str
    prior: int | None = None


METHODS = (ReconMethod("Zero-filled (magnitude of A⁺y)", ZERO_FILLED),
           ReconMethod("DDS, ellipsoid prior (out of distribution)", OUT_OF_DISTRIBUTION, ELLIPSES_ID),
           ReconMethod("DDS, brain prior (in distribution)", IN_DISTRIBUTION, BRAIN_ID))


@dataclass(frozen=True)
class ReconDemoSettings:
    """Sizes of one recon demo run."""

    num_train_cases: int       # per prior
    num_test_cases: int        # held-out brain phantoms
    shape: tuple
    spacing: tuple
    expert_epochs: int
    expert_iterations: int     # per epoch
    steps: int                 # DDS sampling steps


FULL = ReconDemoSettings(8, 4, (48, 48, 48), (1.5, 1.5, 1.5), expert_epochs=10, expert_iterations=200, steps=50)
SMOKE = ReconDemoSettings(3, 2, (24, 24, 24), (2.0, 2.0, 2.0), expert_epochs=1, expert_iterations=4, steps=3)
SETTINGS = {"full": FULL, "smoke": SMOKE}


def real_scan_file() -> Path:
    """nibabel's tests/data/anatomical.nii: a 33 x 41 x 25 T1 crop at 2 mm (LAS, int16) that ships with nibabel."""
    import nibabel
    return Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


def write_real_case(folder: Path) -> Path:
    """The real scan as a T1 case of the brain dataset, `REAL_CASE_0000.nii.gz`: its grid, float32, clipped at 0.

    Its 26 negative voxels (of 33,825, left by its SPM spatial normalisation) are set to 0: a magnitude
    reconstruction cannot be negative, and the reference should be an image it can reach.
    """
    path = folder / f"{REAL_CASE}_0000.nii.gz"
    if not path.is_file():
        image, props = read_image(real_scan_file())
        write_image(np.maximum(image, 0).astype(np.float32), props, path)
    return path


def held_out_indices(settings: ReconDemoSettings) -> list[int]:
    """Phantom indices of the held-out cases: every kind but the anisotropic one (index % 5 == 2).

    A recon case is sampled on its own grid, and a thick-slice grid is one the prior (trained at the target
    spacing) has not seen, which would blur what "in distribution" means.
    """
    indices, index = [], 0
    while len(indices) < settings.num_test_cases:
        if index % 5 != 2:
            indices.append(index)
        index += 1
    return indices


def make_test_cases(folder: Path, settings: ReconDemoSettings, seed: int = 0) -> Path:
    """Render the held-out brain phantoms (BrainTest_XXX, from seed TEST_SEED_OFFSET + seed) into `folder`."""
    for number, index in enumerate(held_out_indices(settings)):
        case = sample_demo_case(index, TEST_SEED_OFFSET + seed, tuple(settings.shape), tuple(settings.spacing), NOISE)
        case = replace(case, case_id=f"BrainTest_{number:03d}")
        if not (folder / "imagesTr" / f"{case.case_id}_0000.nii.gz").is_file():
            write_case(case, folder)
    return folder / "imagesTr"


def recon_dataset(raw: Path, dataset_id: int, settings: ReconDemoSettings, seed: int) -> Path:
    """The demo dataset of `dataset_id` with one task, recon of T1 under KSPACE (made again only if it differs)."""
    folder = raw / DATASET_NAMES[dataset_id]
    tasks = {TASK: {"target": TARGET, "inputs": [], "degradation": dict(KSPACE)}}
    spec_file = folder / "dataset.json"
    existing = json.loads(spec_file.read_text()) if spec_file.is_file() else {}
    if existing.get("numTraining") == settings.num_train_cases and existing.get("tasks") == tasks:
        return folder
    make_demo_dataset(raw, dataset_id, num_cases=settings.num_train_cases, shape=tuple(settings.shape),
                      spacing=tuple(settings.spacing), seed=seed, noise=NOISE, kind=KINDS[dataset_id])
    spec = json.loads(spec_file.read_text())
    spec["tasks"] = tasks
    spec["description"] += (" Task recon: T1 from 8x Poisson-disc undersampled k-space, one mask per axial slice "
                            "(diffens_demo --recon).")
    atomic_write_json(spec, spec_file)
    return folder


def separable_expert(plans: dict) -> str:
    """The 2D expert whose slices the task's mask separates into (slice_axis of the degradation)."""
    axis = int(plans["tasks"][TASK]["degradation"]["slice_axis"])
    return next(name for name, configuration in plans["configurations"].items()
                if configuration.get("kind") == "expert" and configuration.get("slice_axis") == axis)


def _plan(dataset_id: int, num_processes: int) -> str:
    """Plan and preprocess one dataset (tiny preset); returns the expert the task's mask separates into."""
    plan_and_preprocess(dataset_id, preset="tiny", num_processes=num_processes, verify_integrity=True)
    return separable_expert(load_plans(paths.preprocessed_folder() / DATASET_NAMES[dataset_id], "diffensPlans_tiny"))


def _predict(method: ReconMethod, inputs: Path, output: Path, *, experts: dict, steps: int, seed: int,
             device) -> dict:
    """Reconstruct every bundle of `inputs` with `method` into `output`; the prediction summary."""
    if method.prior is None:
        summary = zero_filled_from_files(BRAIN_ID, TASK, inputs, output, continue_prediction=True, progress=False)
    else:
        # the prior's own dataset and task: the bundles of the brain task carry their mask
        predictor = DiffensPredictor(steps=steps, seed=seed, device=device, progress=False)
        predictor.initialize_from_trained_model(method.prior, TASK, experts[method.prior], fold="all")
        summary = predictor.predict_from_files(inputs, output, continue_prediction=True)
    failed = [row for row in summary["cases"] if row["status"] == "failed"]
    if failed:
        raise RuntimeError(f"diffens_demo --recon: {method.name} failed on {[r['case'] for r in failed]}: "
                           f"{failed[0]['message']}")
    return summary


def predict_methods(work: Path, experts: dict, *, steps: int, seed: int, device, clock: StageClock) -> dict:
    """{method name: {group: {case: seconds}}} of every method on both bundle folders (phantoms, real).

    The seconds are those of the cases this run predicted (a resumed case has none); each method is a clock step."""
    seconds = {}
    for method in METHODS:
        seconds[method.name] = {}
        for group in (PHANTOMS, REAL):
            summary = _predict(method, work / "test_bundles" / group, work / "predictions" / method.folder / group,
                               experts=experts, steps=steps, seed=seed, device=device)
            seconds[method.name][group] = {r["case"]: r["seconds"] for r in summary["cases"] if r["status"] == "done"}
        clock.done(f"prediction: {method.name}" + ("" if method.prior is None else f" ({steps} steps)"))
    return seconds


def evaluate_methods(work: Path) -> dict:
    """{method name: {group: evaluate_folders' results}}: the bundles' folders are the reference folders."""
    return {method.name: {group: evaluate_folders(work / "test_bundles" / group,
                                                  work / "predictions" / method.folder / group,
                                                  output_file=work / "evaluation" / f"{method.folder}_{group}.json",
                                                  num_processes=1, mmd=False, verbose=False)
                          for group in (PHANTOMS, REAL)}
            for method in METHODS}


def _previous_seconds(work: Path) -> dict:
    """{method: {case: seconds}} of an earlier run of this demo (a resumed run skips predictions it already has)."""
    path = work / "demo_summary.json"
    return json.loads(path.read_text()).get("seconds_per_case", {}) if path.is_file() else {}


def _degrade(work: Path, settings: ReconDemoSettings, seed: int) -> None:
    """The held-out phantoms' and the real scan's bundles, degraded with the brain dataset's recon task."""
    phantoms = make_test_cases(work / "test_cases" / PHANTOMS, settings, seed)
    real = work / "test_cases" / REAL
    real.mkdir(parents=True, exist_ok=True)
    write_real_case(real)
    for group, folder in ((PHANTOMS, phantoms), (REAL, real)):
        summary = degrade_folder(folder, work / "test_bundles" / group, BRAIN_ID, TASK, verbose=False, seed=seed)
        if summary["num_failed"]:
            raise RuntimeError(f"diffens_demo --recon: diffens_degrade failed: {summary['cases']}")


def run_recon_demo(work_folder: str | Path, *, setting: str = "full", num_processes: int = 2, device="cpu",
                   seed: int = 0, verbose: bool = True) -> dict:
    """Run the recon demo in `work_folder` (diffens_raw/preprocessed/results inside it); returns its summary."""
    if setting not in SETTINGS:
        raise DemoSetupError(f"Unknown recon demo setting {setting!r}. Fix: use one of {sorted(SETTINGS)}.")
    settings, smoke = SETTINGS[setting], setting == "smoke"
    work = Path(work_folder).resolve()
    check_work_folder(work, settings, seed, known=SETTINGS, demo="recon")
    folders = paths.use_folders(work)
    clock = StageClock(verbose)
    for dataset_id in (ELLIPSES_ID, BRAIN_ID):
        recon_dataset(folders[paths.RAW_VARIABLE], dataset_id, settings, seed)
    clock.done(f"datasets ({settings.num_train_cases} ellipsoid + {settings.num_train_cases} brain phantoms, "
               f"{list(settings.shape)} voxels)")
    experts = {}
    for dataset_id in (ELLIPSES_ID, BRAIN_ID):
        experts[dataset_id] = _plan(dataset_id, num_processes)
        clock.done(f"plan and preprocess {DATASET_NAMES[dataset_id]} (tiny preset)")
        train(dataset_id, TASK, experts[dataset_id], "all", continue_training=True, device=device,
              num_epochs=settings.expert_epochs, iterations_per_epoch=settings.expert_iterations,
              echo=verbose and not smoke, validate=False)
        clock.done(f"training {DATASET_NAMES[dataset_id]} {TASK} {experts[dataset_id]} "
                   f"({settings.expert_epochs} x {settings.expert_iterations} iterations)")
    _degrade(work, settings, seed)
    clock.done(f"degraded test inputs ({settings.num_test_cases} held-out phantoms + {REAL_CASE}, "
               f"{KSPACE['acceleration']}x Poisson-disc)")
    seconds = predict_methods(work, experts, steps=settings.steps, seed=seed, device=device, clock=clock)
    evaluations = evaluate_methods(work)
    clock.done("evaluation")
    table, real_rows, seconds = recon_rows(evaluations, seconds, _previous_seconds(work),
                                           {m.name: m.folder for m in METHODS})
    checks = acceptance(table, real_rows)
    previews = recon_previews(work, [(m.name, m.folder) for m in METHODS])
    clock.done("report")
    summary = {"settings": {**asdict(settings), "setting": setting, "smoke": smoke, "device": str(device),
                            "seed": seed, "kspace": KSPACE, "target": TARGET, "experts": experts},
               "table": table, "real_case": real_rows, "acceptance": checks, "seconds_per_case": seconds,
               "seconds_per_step": clock.steps, "total_seconds": round(time.time() - clock.started, 1),
               "work_folder": str(work), "previews": [str(p) for p in previews]}
    atomic_write_json(summary, work / "demo_summary.json")
    atomic_write_text(format_recon_table(summary), work / "demo_table.md")
    return summary
