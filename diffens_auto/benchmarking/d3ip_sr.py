"""The SR row of `diffens_benchmark d3ip`: the SR demo's Diff-Ensembler with and without `--adapt d3ip` on inputs
out of its distribution.

The models are the SR demo's (`diffens_demo -o FOLDER`: experts and ensembler trained on brain-phantom FLAIR,
2x average pooling); `--sr_models FOLDER` takes a finished demo folder (read only), otherwise the demo runs first in
the work folder (training time is not counted). The inputs: nibabel's real T1 crop (another contrast, real anatomy;
cropped to whole 2x2x2 blocks so the output grid is the reference's) and held-out ellipsoid phantoms (shapes the
models never saw), each pooled with the demo's factor. Rows: trilinear + projection (the floor every SR method must
beat), Diff-Ensembler, and Diff-Ensembler + D3IP with the plans' SR adaptation defaults; the same sampler seed, so
the two differ only by the adaptation. Every prediction runs through `DiffensPredictor.predict_volume` in-process.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diffens_auto import paths
from diffens_auto.demo import pipeline as sr_demo
from diffens_auto.demo.dataset import make_demo_dataset
from diffens_auto.demo.recon import real_scan_file
from diffens_auto.evaluation import psnr, ssim3d
from diffens_auto.imageio import read_image
from diffens_auto.inference.interpolation import trilinear_upsample
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.sampling_settings import AdaptationRequest
from diffens_auto.operators import degrade_image

SR_GROUP = "sr"
SR_GROUP_NAME = "SR 2x, the SR demo's Diff-Ensembler on inputs out of its distribution"
ELLIPSE_SEED = 3000
SR_ROWS = ("Trilinear + projection (floor)", "Diff-Ensembler", "Diff-Ensembler + D3IP")


def sr_models_folder(work: Path, models: Path | None, setting: str, device) -> Path:
    """The SR demo folder with the trained models: `models` as given, or the demo run (resumed) in `work`."""
    if models is None:
        sr_demo.run_demo(work / "sr_demo", setting=setting, device=device, verbose=True)
        models = work / "sr_demo"
    if not (models / "results" / f"Dataset{sr_demo.DEMO_DATASET_ID:03d}_DemoBrain" / sr_demo.TASK).is_dir():
        from diffens_auto.benchmarking.d3ip import D3IPBenchmarkError
        raise D3IPBenchmarkError(f"--sr_models {models}: no trained sr task there. Fix: give the folder of a "
                                 "finished `diffens_demo -o FOLDER` run, or leave --sr_models out to run it.")
    return models


def sr_references(work: Path, setting: str, num_ellipses: int) -> dict:
    """{case: (reference array, props)}: the real T1 crop in whole blocks of the demo's factor and `num_ellipses`
    ellipsoid phantoms on the SR demo's grid at `setting`."""
    shape, spacing = sr_demo.SETTINGS[setting].shape, sr_demo.SETTINGS[setting].spacing
    real, props = read_image(real_scan_file())
    factor = sr_demo.SETTINGS[setting].sr_factor
    block = [n - n % factor for n in real.shape]
    cases = {"real_t1": (np.maximum(real[:block[0], :block[1], :block[2]], 0).astype(np.float32),
                         {**props, "shape": block})}
    folder = work / "sr_ellipses"
    if num_ellipses and not (folder / "Dataset901_DemoEllipses" / "dataset.json").is_file():
        make_demo_dataset(folder, 901, num_cases=num_ellipses, shape=tuple(shape), spacing=tuple(spacing),
                          seed=ELLIPSE_SEED, noise=0.0, kind="ellipses")
    for path in sorted(folder.glob("*/imagesTr/*_0000.nii.gz"))[:num_ellipses]:
        array, image_props = read_image(path)
        cases[path.name[:-len("_0000.nii.gz")]] = (array.astype(np.float32), image_props)
    return cases


def _scores(reference: np.ndarray, image: np.ndarray) -> dict:
    data_range = float(reference.max() - reference.min())
    return {"psnr": psnr(reference, image, data_range), "ssim": ssim3d(reference, image, data_range)}


def _predictors(models: Path, steps: int, overrides: dict, device) -> dict:
    """{row name: predictor} of the Diff-Ensembler without and with D3IP (the models' folders are switched to)."""
    paths.use_folders(models)
    predictors = {}
    for name, method in ((SR_ROWS[1], "none"), (SR_ROWS[2], "d3ip")):
        request = AdaptationRequest(method, {} if method == "none" else dict(overrides))
        predictor = DiffensPredictor(steps=steps, seed=0, device=device, progress=False, adaptation=request)
        predictors[name] = predictor.initialize_from_trained_model(sr_demo.DEMO_DATASET_ID, sr_demo.TASK,
                                                                    "3d_ensembler", fold="all")
    return predictors


def _predict(predictor, lowres, lowres_props, case: str) -> tuple[np.ndarray, float]:
    target = predictor.model.task_plans["target"]
    started = time.perf_counter()
    mean, _, _, _ = predictor.predict_volume({target: lowres}, {target: lowres_props}, case)
    return mean, time.perf_counter() - started


def sr_step_seconds(models: Path, references: dict, overrides: dict, device, steps: int = 4) -> dict:
    """Seconds of a Diff-Ensembler sampling step without D3IP, and what an adapted step adds (short predictions of
    the first case, the extra time spread over the steps inside the adaptation's horizon)."""
    predictors = _predictors(models, steps, overrides, device)
    case, (reference, props) = next(iter(references.items()))
    adapted = predictors[SR_ROWS[2]]
    lowres, lowres_props = degrade_image(reference, props, adapted.model.task_plans["degradation"])
    plain = _predict(predictors[SR_ROWS[1]], lowres, lowres_props, case)[1]
    with_d3ip = _predict(adapted, lowres, lowres_props, case)[1]
    settings, schedule = adapted.adapted.adaptation, adapted.sampler.schedule
    inside = sum(settings.in_horizon(int(t), schedule.num_train_steps) for t in adapted.sampler.timesteps.tolist())
    return {"sr_none": plain / steps, "sr_d3ip": max(with_d3ip - plain, 0.0) / max(inside, 1)}


def run_sr_rows(models: Path, references: dict, *, steps: int, overrides: dict, device) -> list[dict]:
    """One row per case and method (SR_ROWS) with PSNR, SSIM and seconds; the models' folders are switched to."""
    predictors = _predictors(models, steps, overrides, device)
    degradation = next(iter(predictors.values())).model.task_plans["degradation"]
    rows = []
    for case, (reference, props) in references.items():
        lowres, lowres_props = degrade_image(reference, props, degradation)
        floor, _ = trilinear_upsample(lowres, lowres_props, degradation, project=True)
        rows.append({"method": SR_ROWS[0], "group": SR_GROUP, "case": case, "seed": 0, "seconds": 0.0,
                     **_scores(reference, floor)})
        for name, predictor in predictors.items():
            mean, seconds = _predict(predictor, lowres, lowres_props, case)
            rows.append({"method": name, "group": SR_GROUP, "case": case, "seed": 0, "seconds": seconds,
                         **_scores(reference, mean)})
    return rows
