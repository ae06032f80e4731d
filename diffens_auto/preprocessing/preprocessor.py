"""Preprocess one case (crop, resample, normalise) and a whole dataset (in worker processes, resumable).

Properties of a case (JSON, `CASE.json`), everything needed to map a prediction back onto the original image:
    {"case_id", "files": [...], "file_stamps": [[size, mtime_ns], ...], "channel_names": {"0": "T1", ...},
     "image_props": imageio props of the original canonical image (geometry, reorientation, io),
     "shape_before_crop": [X, Y, Z], "bbox": [[lo, hi), x3], "shape_after_crop": [...],
     "spacing_before_resampling": [...], "spacing_after_resampling": target spacing, "shape_after_resampling": [...],
     "resampling": {"order", "order_z", "anisotropy_threshold", "separate_z_axis": int | null},
     "normalization": {"0": {"case": {"center", "half_range"}, "degraded": {"avgpool_4x4x4": {...},
                                                                            "kspace_poisson_8x_acs12_z": {...}},
                             "dataset": {...} (if the plans have it)}, ...},
     "preprocessing": the plans settings the case was made with (a changed setting re-preprocesses the case)}
"""
from __future__ import annotations

import copy
import json
import shutil
import traceback
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from diffens_auto.dataset.cases import file_stamps
from diffens_auto.dataset.dataset_json import DatasetError
from diffens_auto.errors import DiffensError
from diffens_auto.imageio import ImageReadError, read_case
from diffens_auto.preprocessing import storage
from diffens_auto.preprocessing.cropping import crop_to_nonzero
from diffens_auto.preprocessing.normalization import (DEFAULT_PERCENTILES, case_normalization, degraded_targets,
                                                      kspace_targets, normalize)
from diffens_auto.preprocessing.resampling import (compute_new_shape, extend_foreground, foreground_at_spacing,
                                                   resample_data, separate_z_axis)
from diffens_auto.workers import map_in_workers

DEFAULT_RESAMPLING = {"order": 3, "order_z": 0, "anisotropy_threshold": 3.0}


class PreprocessingError(DiffensError, RuntimeError):
    """One or more cases could not be preprocessed; the message names each case, its files and the cause."""


def resampling_settings(plans: Mapping) -> dict:
    """Return the plans' resampling settings, with nnU-Net's defaults for missing keys."""
    settings = {**DEFAULT_RESAMPLING, **plans.get("resampling", {})}
    return {"order": int(settings["order"]), "order_z": int(settings["order_z"]),
            "anisotropy_threshold": float(settings["anisotropy_threshold"])}


def preprocessing_settings(plans: Mapping) -> dict:
    """Return (as JSON would) the plans settings a preprocessed case depends on; stored in its properties."""
    normalization = plans.get("normalization", {})
    if normalization.get("scheme", "percentile_affine") != "percentile_affine":
        raise ValueError(f"plans normalization scheme {normalization['scheme']!r} is unknown (only "
                         "'percentile_affine'). Fix: correct the plans file or re-run diffens_plan_and_preprocess.")
    settings = {
        "target_spacing": [float(s) for s in plans["target_spacing"]],
        "resampling": resampling_settings(plans),
        "normalization": {"scheme": normalization.get("scheme", "percentile_affine"),
                          "percentiles": [float(p) for p in normalization.get("percentiles", DEFAULT_PERCENTILES)],
                          "dataset": normalization.get("dataset", {})},
        "degraded_targets": {str(c): v for c, v in degraded_targets(plans).items()},
    }
    kspace = kspace_targets(plans)
    if kspace:
        # only then, so that the cases of plans without a recon task keep their settings (and are not redone)
        settings["kspace_targets"] = {str(c): v for c, v in kspace.items()}
    return json.loads(json.dumps(settings))


def _channel_names(plans: Mapping, files: list[Path]) -> dict[str, str]:
    names = plans.get("channel_names")
    if names:
        return {str(k): str(v) for k, v in names.items()}
    return {str(i): Path(f).name for i, f in enumerate(files)}


def preprocess_case(files: list[Path], plans: Mapping, case_id: str, return_mask_original: bool = False):
    """Read, crop to non-zero, resample to the target spacing and normalise one case.

    Returns (data float32 (C, X, Y, Z), mask uint8 (X, Y, Z), properties), and with `return_mask_original` also
    the original-resolution foreground of the crop region (uint8), which inversion needs to restore the
    background exactly.
    """
    files = [Path(f) for f in files]
    names = plans.get("channel_names")
    if names and len(names) != len(files):
        raise ValueError(f"case {case_id}: {len(files)} file(s) {[str(f) for f in files]} but the plans have "
                         f"{len(names)} channels {dict(names)}. Fix: give one file per channel, in channel order.")
    raw, image_props = read_case(files)
    data, mask, properties, mask_original = preprocess_arrays(raw, image_props, plans, case_id, files=files)
    properties["file_stamps"] = file_stamps(files)
    properties["channel_names"] = _channel_names(plans, files)
    result = (data, mask, properties)
    return result + (mask_original,) if return_mask_original else result


def preprocess_arrays(raw: np.ndarray, image_props: Mapping, plans: Mapping, case_id: str, *,
                      channels: list[int] | None = None, files=None):
    """Crop, resample and normalise a case already in memory: raw (C, X, Y, Z) canonical, with its imageio props.

    `channels` are the dataset channel numbers of raw's rows (default 0..C-1; prediction passes only the task's
    channels); properties["normalization"] is keyed by them. Returns (data, mask uint8, properties,
    mask_original uint8).
    """
    channels = list(range(raw.shape[0])) if channels is None else [int(c) for c in channels]
    cropped, mask_original, bbox = crop_to_nonzero(raw, case_id, files)
    spacing = [float(s) for s in image_props["spacing"]]
    target = [float(s) for s in plans["target_spacing"]]
    resampling = resampling_settings(plans)
    axis = separate_z_axis(spacing, target, resampling["anisotropy_threshold"])
    new_shape = compute_new_shape(cropped.shape[1:], spacing, target)

    data = resample_data(extend_foreground(cropped, mask_original), spacing, target, new_shape,
                         order=resampling["order"], order_z=resampling["order_z"],
                         anisotropy_threshold=resampling["anisotropy_threshold"], separate_z=axis)
    mask = foreground_at_spacing(mask_original, spacing, target, new_shape)
    # Zero outside the foreground before normalising: removes spline ringing and makes background invert to 0.
    data[:, ~mask] = 0
    normalization = case_normalization(cropped, mask_original, data, plans, channels, case_id=case_id)
    for row, c in enumerate(channels):
        data[row] = normalize(data[row], normalization[str(c)]["case"])

    properties = {
        "case_id": case_id,
        "files": [str(f) for f in files] if files is not None else [],
        "channels": channels,
        "image_props": copy.deepcopy(dict(image_props)),
        "shape_before_crop": [int(s) for s in image_props["shape"]],
        "bbox": [[int(lo), int(hi)] for lo, hi in bbox],
        "shape_after_crop": [int(s) for s in cropped.shape[1:]],
        "spacing_before_resampling": spacing,
        "spacing_after_resampling": target,
        "shape_after_resampling": [int(s) for s in new_shape],
        "resampling": {**resampling, "separate_z_axis": axis},
        "normalization": normalization,
        "preprocessing": preprocessing_settings(plans),
    }
    return data, mask.astype(np.uint8), properties, mask_original.astype(np.uint8)


def preprocess_and_save_case(case_id: str, files: list[Path], plans: Mapping, output_folder: Path) -> None:
    """Preprocess one case and write its files into `output_folder` (JSON last)."""
    data, mask, properties, mask_original = preprocess_case(files, plans, case_id, return_mask_original=True)
    storage.save_case(output_folder, case_id, data, mask, mask_original=mask_original, properties=properties)


def _worker(case_id: str, files: list[Path], plans: Mapping, output_folder: Path) -> tuple[str, str | None]:
    try:
        preprocess_and_save_case(case_id, files, plans, output_folder)
        return case_id, None
    except (DatasetError, ImageReadError, ValueError) as e:  # the user's data: the message says it all
        return case_id, f"{type(e).__name__}: {e}"
    except Exception as e:  # reported (with every other failure) by the parent after the remaining cases ran
        return case_id, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"


def _check_case_ids(case_ids) -> None:
    clashes = [c for c in case_ids if f"{c}_mask" in case_ids or f"{c}_mask_original" in case_ids]
    if clashes:
        raise PreprocessingError(f"case ids {clashes} clash with the '<id>_mask' files of other cases. Fix: rename "
                                 "the cases so that no id is another id followed by '_mask'.")


def preprocess_dataset(cases: Mapping[str, list[Path]], plans: Mapping, output_folder: Path, *,
                       num_processes: int = 4, clean: bool = False, verbose: bool = True) -> dict:
    """Preprocess `cases` ({case_id: files per channel}) into `output_folder`; return a summary.

    Finished cases (made with the same settings) are skipped, so a re-run resumes; `clean` deletes the folder
    first. A failing case does not stop the others: after all ran, PreprocessingError names each failed case,
    its files and the cause, while the finished cases stay on disk.
    """
    output_folder = Path(output_folder)
    if clean and output_folder.exists():
        shutil.rmtree(output_folder)
    output_folder.mkdir(parents=True, exist_ok=True)
    storage.remove_temporary_files(output_folder)
    _check_case_ids(set(cases))
    settings = preprocessing_settings(plans)
    todo = [c for c in sorted(cases)
            if not storage.is_case_finished(output_folder, c, settings, file_stamps([Path(f) for f in cases[c]]))]
    skipped = sorted(set(cases) - set(todo))
    jobs = [(c, [Path(f) for f in cases[c]], dict(plans), output_folder) for c in todo]
    results = map_in_workers(_worker, jobs, num_processes, "preprocessing", verbose)
    failures = {c: error for c, error in results if error is not None}
    if failures:
        report = "\n".join(f"- case {c} (files: {', '.join(str(f) for f in cases[c])}):\n  {failures[c]}"
                           for c in sorted(failures))
        raise PreprocessingError(
            f"{len(failures)} of {len(cases)} case(s) failed to preprocess into {output_folder}:\n{report}\n"
            f"The {len(cases) - len(failures)} other case(s) are on disk. Fix the failed cases' files (or remove "
            "the cases) and re-run: finished cases are skipped.")
    return {"output_folder": str(output_folder), "num_cases": len(cases),
            "preprocessed": sorted(todo), "skipped": skipped}
