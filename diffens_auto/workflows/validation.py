"""Validation after training: sample the fold's validation cases with few steps and score them (predict + evaluate).

It also writes the per-timestep diagnostic of the model (workflows/timestep_diagnostic.py) for the cases it scored.

Each validation case is made from its raw files exactly as a user's input would be (the target degraded with the
task's degradation and written geometry, the other inputs as they are), predicted with the trained configuration,
written to fold_F/validation/CASE<file_ending> on the reference's grid, and compared with the reference:
PSNR (data range = the reference's max − min), 3D SSIM and MAE over the whole volume, and PSNR inside the
reference's foreground (non-zero voxels). The table goes to fold_F/validation/summary.json.

A recon task's validation case (a kspace degradation) is degraded as `diffens_degrade -t recon --seed SEED` does
(`degrade_kspace_case`: fold_F/validation/bundles/CASE.npz and CASE_reference beside it, SEED the validation's
seed, 0 by default: the seed preprocessing drew the case's mask with; the same mask only when preprocessing
neither cropped nor resampled the case, since a mask is drawn for its grid) and reconstructed from that bundle by DDS
as `diffens_predict` does (`prepare_recon_case`, `DDSReconstruction`), on the reference's own grid.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffens_auto import paths
from diffens_auto.atomic import atomic_write_json
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.dataset.splits import split_case_ids
from diffens_auto.evaluation import mae, psnr, ssim3d
from diffens_auto.imageio import crop_geometry, read_image, read_kspace_bundle, write_image
from diffens_auto.inference.degrade_inputs import WRITTEN, degrade_kspace_case
from diffens_auto.inference.model import load_trained_model
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.recon_prediction import DDSReconstruction, prepare_recon_case
from diffens_auto.model_folder.checkpoints import FINAL
from diffens_auto.model_folder.location import ModelLocation
from diffens_auto.operators import degrade_image
from diffens_auto.planning.task_sections import is_kspace
from diffens_auto.preprocessing import storage
from diffens_auto.workflows.timestep_diagnostic import timestep_diagnostic, write_timestep_diagnostic

VALIDATION_STEPS = 10
METRICS = ("psnr", "ssim", "mae", "psnr_foreground")


def validation_inputs(files: list[str], task_plans: dict) -> tuple[dict, dict, np.ndarray, dict]:
    """(input arrays by channel, their props, reference array, reference props) of a case's raw channel files."""
    target = int(task_plans["target"])
    reference, reference_props = read_image(files[target])
    arrays, props = {}, {}
    for channel in task_plans["inputs"]:
        arrays[int(channel)], props[int(channel)] = read_image(files[int(channel)])
    if task_plans.get("degradation"):
        arrays[target], props[target] = degrade_image(reference, reference_props, task_plans["degradation"])
    return arrays, props, reference, reference_props


def recon_validation_case(reconstruction: DDSReconstruction, case: str, target_file, bundles: Path,
                          seed: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """(reconstruction, its props, reference) of a recon case: its bundle written into `bundles`, then DDS of it."""
    entry = degrade_kspace_case(case, str(target_file), str(bundles), reconstruction.plans["tasks"][
        reconstruction.task]["degradation"], seed)
    if entry["status"] != WRITTEN:
        raise ValueError(entry["message"])
    bundle, reference_file = (bundles / name for name in entry["files"])
    prepared = prepare_recon_case(read_kspace_bundle(bundle), reconstruction.plans, reconstruction.task, case)
    prediction = np.mean(reconstruction.reconstruct(prepared), axis=0).astype(np.float32)
    return prediction, prepared.props, read_image(reference_file)[0]


def _predict_case(predictor, files, case: str, output: Path, seed: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """(prediction on the reference's grid, its props, reference) of one validation case."""
    model = predictor.model
    if is_kspace(model.task_plans.get("degradation")):
        return recon_validation_case(DDSReconstruction(predictor), case, files[int(model.task_plans["target"])],
                                     output / "bundles", seed)
    arrays, props, reference, _ = validation_inputs(files, model.task_plans)
    mean, _, output_props, _ = predictor.predict_volume(arrays, props, case)
    # the SR grid of a partial last block extends past the reference: keep the reference's voxels
    prediction = mean[tuple(slice(0, n) for n in reference.shape)]
    return prediction, crop_geometry(output_props, [0, 0, 0], reference.shape), reference


def score(reference: np.ndarray, prediction: np.ndarray) -> dict:
    """PSNR, SSIM, MAE over the whole volume and PSNR inside the reference's non-zero voxels."""
    return {"psnr": psnr(reference, prediction), "ssim": ssim3d(reference, prediction),
            "mae": mae(reference, prediction), "psnr_foreground": psnr(reference, prediction, mask=reference != 0)}


def _finite(value):
    return float(value) if value is not None and np.isfinite(value) else None


def validate_model(dataset, task: str, configuration: str, fold=0, plans_name: str | None = None, *,
                   checkpoint: str = FINAL, steps: int | None = None, seed: int = 0, device="cpu",
                   progress: bool = True) -> dict:
    """Predict and score the fold's validation cases; writes and returns validation/summary.json's content."""
    dataset_name = resolve_dataset_name(dataset)
    model = load_trained_model(dataset_name, task, configuration, fold, plans_name, checkpoint=checkpoint,
                               device=device)
    plans = model.plans
    # a recon task samples with its dds section's steps
    planned = model.task_plans.get("dds", plans["diffusion"]).get("num_inference_steps", VALIDATION_STEPS)
    steps = steps or min(VALIDATION_STEPS, int(planned))
    predictor = DiffensPredictor(steps=steps, seed=seed, device=device, progress=False).use_model(model)
    preprocessed = paths.preprocessed_folder() / dataset_name
    _, cases = split_case_ids(preprocessed, fold)
    location = ModelLocation(paths.results_folder() / dataset_name, task, configuration, model.plans_name, fold)
    output = location.fold_folder / "validation"
    output.mkdir(parents=True, exist_ok=True)
    ending = model.dataset_spec.file_ending
    rows = []
    for case in tqdm(sorted(cases), desc="validation", unit="case", disable=not progress):
        started = time.time()
        try:
            files = storage.load_properties(preprocessed / plans["data_identifier"], case)["files"]
            prediction, prediction_props, reference = _predict_case(predictor, files, case, output, seed)
            write_image(prediction, prediction_props, output / f"{case}{ending}")
            metrics = {k: _finite(v) for k, v in score(reference, prediction).items()}
            rows.append({"case": case, "status": "done", "message": "", **metrics,
                         "seconds": round(time.time() - started, 2)})
        except Exception as e:    # one failing case is reported; the others are still scored
            rows.append({"case": case, "status": "failed", "message": f"{type(e).__name__}: {e}\n"
                         f"{traceback.format_exc(limit=-2)}", **{k: None for k in METRICS},
                         "seconds": round(time.time() - started, 2)})
    done = [r for r in rows if r["status"] == "done"]
    mean = {k: (float(np.mean([r[k] for r in done if r[k] is not None]))
                if any(r[k] is not None for r in done) else None) for k in METRICS}
    summary = {"dataset": dataset_name, "task": task, "configuration": configuration, "fold": fold,
               "plans_name": model.plans_name, "checkpoint": checkpoint, "steps": steps, "seed": seed,
               "metric_definitions": {
                   "psnr": "10 log10(R^2 / MSE) over the whole volume, R = reference max - min (dB)",
                   "ssim": "mean 3D SSIM (Gaussian window sigma 1.5, K1 0.01, K2 0.03, L = R) over the volume",
                   "mae": "mean |reference - prediction| over the whole volume (image intensities)",
                   "psnr_foreground": "PSNR over the reference's non-zero voxels, R as above"},
               "mean": mean, "cases": rows,
               "timestep_diagnostic": _diagnose(model, preprocessed / plans["data_identifier"],
                                                [r["case"] for r in done], output, seed=seed, device=device)}
    atomic_write_json(summary, output / "summary.json")
    return summary


def _diagnose(model, data_folder, cases: list[str], output, *, seed: int, device) -> str:
    """Write the per-timestep diagnostic of the validated cases; its file name, or why it could not be made."""
    if not cases:
        return "not made: no validation case was predicted"
    try:
        json_path, _ = write_timestep_diagnostic(timestep_diagnostic(model, data_folder, cases, seed=seed,
                                                                     device=device), output)
    except Exception as e:    # the diagnostic explains a model; its failure must not lose the validation's scores
        return f"not made: {type(e).__name__}: {e}"
    return json_path.name


def validation_report(summary: dict) -> str:
    """One line for the console: cases, steps, the mean metrics and the failed cases of a validation summary."""
    mean = {k: (round(v, 4) if v is not None else None) for k, v in summary["mean"].items()}
    failed = [r["case"] for r in summary["cases"] if r["status"] == "failed"]
    return (f"Validation ({len(summary['cases'])} cases, {summary['steps']} steps): {mean}"
            + (f"; FAILED: {failed}" if failed else ""))
