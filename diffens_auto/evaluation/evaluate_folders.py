"""evaluate_folders: every case of a reference folder against its prediction, per region, plus a dataset MMD.

Writes the results as JSON (`output_file`, default PRED/evaluation.json) and CSV beside it; see
documentation/evaluation.md for the format.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from diffens_auto.atomic import atomic_path, atomic_write_json
from diffens_auto.evaluation.case_files import detect_file_ending, pair_case_files
from diffens_auto.evaluation.evaluate_case import (COLUMNS, METRICS, REGION_ALL, REGION_FOREGROUND, EvaluationSettings,
                                                   evaluate_case_job)
from diffens_auto.evaluation.metrics import check_data_range
from diffens_auto.evaluation.mmd import median_heuristic_bandwidth, mmd2
from diffens_auto.workers import map_in_workers

DEFAULT_OUTPUT_NAME = "evaluation.json"
MAX_MMD_PATCHES = 2048

METRIC_DEFINITIONS = {
    "psnr": "peak signal-to-noise ratio in dB, 10*log10(data_range^2 / MSE) over the region's voxels",
    "ssim": "mean of the 3D SSIM map (Wang et al. 2004; Gaussian window sigma 1.5 truncated at 3.5 sigma = 11^3 "
            "voxels, population covariances, K1 0.01, K2 0.03, reflected borders) over the region's voxels at least "
            "5 voxels from every face; equals scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5, "
            "use_sample_covariance=False) for the whole volume",
    "mae": "mean absolute error, mean |reference - prediction| over the region's voxels",
    "mace": "mean absolute calibration error, mean |std - |reference - prediction|| over the region's voxels; "
            "needs the uncertainty map CASE_std<ending>",
    "data_range": "intensity span L of PSNR and SSIM: the given data_range, else the reference's max - min in the "
                  "region",
    "num_voxels": "voxels in the region",
    "regions": "without masks: 'all' = the whole volume, 'foreground' = reference != 0; with masks: 'all' = mask > 0, "
               "'label_N' = mask == N",
    "mmd2": "unbiased MMD^2 (Gretton et al. 2012, Lemma 6: pairs of patches at the same positions) between the "
            "reference and the prediction patches of all cases, Gaussian kernel exp(-|a-b|^2 / (2 sigma^2)), sigma "
            "= median distance between the pooled patches; 0 for identical volumes, can be slightly negative",
    "null": "not available: no uncertainty map (mace), undefined (empty region, constant reference, volume smaller "
            "than the SSIM window), a failed case, or an infinite PSNR (prediction equals reference; see message)",
}


def _finite_or_none(value):
    """JSON has no NaN or infinity: both become null."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _region_order(region: str) -> tuple:
    """Sort key: all, foreground, then label_N by N."""
    fixed = {REGION_ALL: 0, REGION_FOREGROUND: 1}
    if region in fixed:
        return fixed[region], 0, region
    label = region.removeprefix("label_")
    return (2, int(label), region) if label.isdigit() else (3, 0, region)


def mean_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """Per region, the mean of each metric over the cases evaluated (NaN skipped, inf kept) and num_cases."""
    ok = table[(table["status"] == "ok") & (table["num_voxels"] > 0)]
    means = ok.groupby("region", sort=False)[list(METRICS)].mean()
    means["num_cases"] = ok.groupby("region", sort=False).size()
    return means.loc[sorted(means.index, key=_region_order)]


def dataset_mmd(patches: list[tuple[str, tuple | None]], settings: EvaluationSettings) -> dict:
    """The dataset section: MMD² of the pooled patches and how it was computed."""
    if not settings.mmd:
        return {"mmd2": None, "mmd_settings": {"computed": False}}
    usable = [(case, p) for case, p in patches if p is not None]
    reference = np.concatenate([p[0] for _, p in usable]) if usable else np.empty((0, 0))
    prediction = np.concatenate([p[1] for _, p in usable]) if usable else np.empty((0, 0))
    if len(reference) > MAX_MMD_PATCHES:
        # The kernel matrices grow with the square of the count: keep a seeded subset of (reference, prediction) pairs.
        keep = np.sort(np.random.default_rng(settings.seed).choice(len(reference), MAX_MMD_PATCHES, replace=False))
        reference, prediction = reference[keep], prediction[keep]
    value, sigma = None, None
    if len(reference) >= 2:
        sigma = median_heuristic_bandwidth(reference, prediction)
        value = mmd2(reference, prediction, bandwidth=sigma, paired=True)
    return {"mmd2": _finite_or_none(value), "mmd_settings": {
        "computed": value is not None,
        "estimator": "unbiased MMD^2 of paired samples (Gretton et al. 2012, Lemma 6): mean over i != j of "
                     "k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i)",
        "kernel": "gaussian exp(-|a-b|^2 / (2 sigma^2)) on flattened patches", "bandwidth_sigma": sigma,
        "bandwidth_rule": "median Euclidean distance between distinct patches of the pooled reference and "
                          "prediction patches",
        "patch_size": list(settings.patch_size), "patches_per_case": settings.patches_per_case,
        "max_patches": MAX_MMD_PATCHES, "num_patches": len(reference), "seed": settings.seed,
        "patch_positions": "centred on random foreground voxels (mask > 0, else reference != 0), shifted inside the "
                           "volume; the same positions in reference and prediction",
        "cases_without_patches": [case for case, p in patches if p is None]}}


def results_table(rows: list[dict]) -> pd.DataFrame:
    """The per-case rows as a DataFrame with the documented columns."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


def csv_table(table: pd.DataFrame) -> pd.DataFrame:
    """The per-case rows followed by one row per region with case "mean" (inf kept, NaN left empty)."""
    means = mean_metrics(table)
    mean_rows = pd.DataFrame({"case": "mean", "region": means.index, **{m: means[m].to_numpy() for m in METRICS},
                              "status": "mean", "message": [f"mean over {n} case(s)" for n in means["num_cases"]]},
                             columns=list(COLUMNS))
    return pd.concat([table, mean_rows], ignore_index=True) if len(mean_rows) else table


def write_results(results: dict, table: pd.DataFrame, output_file: str | Path) -> tuple[Path, Path]:
    """Write `results` as JSON to output_file and csv_table(table) beside it (same name, suffix .csv)."""
    json_file = Path(output_file)
    csv_file = json_file.with_suffix(".csv")
    atomic_write_json(results, json_file)
    with atomic_path(csv_file) as tmp:
        csv_table(table).to_csv(tmp, index=False)
    return json_file, csv_file


def evaluate_folders(reference_folder: str | Path, prediction_folder: str | Path, *,
                     mask_folder: str | Path | None = None, std_folder: str | Path | None = None,
                     output_file: str | Path | None = None, data_range: float | None = None,
                     file_ending: str | None = None, num_processes: int = 4, mmd: bool = True,
                     ref_channel: int | None = None, mmd_patch_size: int = 8, mmd_patches_per_case: int = 32,
                     seed: int = 0, verbose: bool = True) -> dict:
    """Evaluate every reference case against its prediction; write JSON + CSV and return the JSON dict."""
    check_data_range(data_range)
    file_ending = file_ending or detect_file_ending(reference_folder)
    cases, extra = pair_case_files(reference_folder, prediction_folder, file_ending, ref_channel=ref_channel,
                                   mask_folder=mask_folder, std_folder=std_folder)
    if extra:
        warnings.warn(f"{len(extra)} prediction(s) without a reference, ignored: {', '.join(f.name for f in extra)}")
    settings = EvaluationSettings(data_range, mmd, (mmd_patch_size,) * 3, mmd_patches_per_case, seed)
    outcomes = map_in_workers(evaluate_case_job, [(c.case, c, settings) for c in cases], num_processes,
                              "Evaluating", verbose)
    table = results_table([row for rows, _ in outcomes for row in rows])
    failed = table[table["status"] == "failed"]
    results = {
        "metric_definitions": METRIC_DEFINITIONS,
        "settings": {"reference_folder": str(reference_folder), "prediction_folder": str(prediction_folder),
                     "mask_folder": None if mask_folder is None else str(mask_folder),
                     "std_folder": str(std_folder if std_folder is not None else prediction_folder),
                     "file_ending": file_ending, "ref_channel": ref_channel, "data_range": data_range},
        "per_case": [{k: _finite_or_none(v) for k, v in row.items()} for row in table.to_dict("records")],
        "mean": {region: {k: _finite_or_none(v) for k, v in values.items()}
                 for region, values in mean_metrics(table).to_dict("index").items()},
        "dataset": {"num_cases": len(cases), "num_failed": len(failed),
                    **dataset_mmd([(c.case, p) for c, (_, p) in zip(cases, outcomes)], settings)},
        "failed": [{"case": r["case"], "message": r["message"]} for r in failed.to_dict("records")],
        "ignored_predictions": [f.name for f in extra],
    }
    output_file = Path(prediction_folder) / DEFAULT_OUTPUT_NAME if output_file is None else output_file
    write_results(results, table, output_file)
    return results


def format_summary(results: dict) -> str:
    """The mean table, the MMD² and the failed cases as console text."""
    means = pd.DataFrame.from_dict(results["mean"], orient="index")
    lines = ["Mean per region (null: not available, or an infinite PSNR that the CSV writes as inf):"]
    if len(means):
        means[list(METRICS)] = means[list(METRICS)].astype(float)
        lines.append(means.to_string(float_format=lambda v: f"{v:.4f}", na_rep="null"))
    else:
        lines.append("  (no case evaluated)")
    if results["dataset"]["mmd_settings"].get("computed"):
        lines.append(f"Dataset MMD^2 (unbiased, Gaussian kernel, median heuristic): {results['dataset']['mmd2']:.6g}")
    lines += [f"FAILED {failure['case']}: {failure['message']}" for failure in results["failed"]]
    return "\n".join(lines)
