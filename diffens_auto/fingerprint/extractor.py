"""Fingerprint extraction, one case at a time (in worker processes), pooled into `dataset_fingerprint.json`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffens_auto.atomic import atomic_write_json
from diffens_auto.dataset.cases import file_stamps
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec, degradation_key
from diffens_auto.foreground import bounding_box, nonzero_mask
from diffens_auto.imageio import count_nonfinite_voxels, read_case
from diffens_auto.workers import map_in_workers

from .residual import case_residual, pooled_residual_statistics

FOREGROUND_SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 99.5)


def sr_degradations(spec: DatasetSpec) -> dict[int, dict[str, list[int]]]:
    """{target channel: {degradation key: factor}} of the dataset's tasks with an avgpool degradation."""
    out: dict[int, dict[str, list[int]]] = {}
    for task in spec.tasks.values():
        if task.degradation is not None and task.degradation.type == "avgpool":
            out.setdefault(int(task.target), {})[degradation_key(task.degradation)] = list(task.degradation.factor)
    return out


def case_fingerprint(case_id: str, files: list[Path], seed: int = 0,
                     degradations: dict[int, dict[str, list[int]]] | None = None) -> dict:
    """Read one case: its spacing, shapes, a seeded sample of foreground intensities per channel and, for each SR
    degradation of a target channel, the residual statistics of `residual.case_residual`."""
    data, props = read_case(files)
    bad = [str(f) for f, channel in zip(files, data) if count_nonfinite_voxels(f, channel)]
    if bad:
        raise DatasetError(f"case {case_id}: NaN or infinite voxels in {bad}. Fix: replace them (e.g. with 0) or "
                           "re-export the images; --verify_dataset_integrity lists every such problem at once.")
    empty = [str(f) for f, channel in zip(files, data) if not channel.any()]
    if empty:
        raise DatasetError(f"case {case_id}: {empty} empty (all voxels are 0), so there is nothing to crop, "
                           "normalise or learn from. Fix: remove the case or replace those files.")
    mask = nonzero_mask(data)
    bbox = bounding_box(mask)
    rng = np.random.default_rng(seed)
    foreground = data[:, mask]
    take = rng.choice(foreground.shape[1], min(FOREGROUND_SAMPLES_PER_CASE, foreground.shape[1]), replace=False)
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    residuals = {str(c): {key: case_residual(data[c][crop], factor, PERCENTILES, rng) for key, factor in keys.items()}
                 for c, keys in (degradations or {}).items()}
    return {
        "case_id": case_id,
        "spacing": [float(s) for s in props["spacing"]],
        "shape_before_crop": [int(s) for s in data.shape[1:]],
        "shape_after_crop": [int(hi - lo) for lo, hi in bbox],
        "foreground_samples": foreground[:, np.sort(take)].astype(np.float64),
        "residuals": residuals,
    }


def _intensity_statistics(samples: np.ndarray) -> dict:
    lo, hi = np.percentile(samples, PERCENTILES)
    return {
        "mean": float(samples.mean()), "std": float(samples.std()), "median": float(np.median(samples)),
        "min": float(samples.min()), "max": float(samples.max()),
        "percentile_00_5": float(lo), "percentile_99_5": float(hi),
    }


def extract_fingerprint(spec: DatasetSpec, cases: dict[str, list[Path]], num_processes: int = 4) -> dict:
    """Compute the dataset fingerprint of `cases` (canonical RAS axis order throughout)."""
    degradations = sr_degradations(spec)
    jobs = [(case_id, files, i, degradations) for i, (case_id, files) in enumerate(sorted(cases.items()))]
    results = map_in_workers(case_fingerprint, jobs, num_processes, "fingerprint")
    samples = np.concatenate([r["foreground_samples"] for r in results], axis=1)
    residuals = {str(c): {key: pooled_residual_statistics([r["residuals"][str(c)][key] for r in results])
                          for key in keys} for c, keys in degradations.items()}
    return {
        "case_identifiers": [r["case_id"] for r in results],
        "file_stamps": {case_id: file_stamps(files) for case_id, files, _, _ in jobs},
        "spacings": [r["spacing"] for r in results],
        "shapes_before_crop": [r["shape_before_crop"] for r in results],
        "shapes_after_crop": [r["shape_after_crop"] for r in results],
        "channel_names": {str(k): v for k, v in spec.channel_names.items()},
        "foreground_intensity_properties_per_channel": {
            str(c): _intensity_statistics(samples[c]) for c in range(samples.shape[0])},
        "residual_statistics_per_channel": residuals,
    }


def load_or_extract_fingerprint(spec: DatasetSpec, cases: dict[str, list[Path]], output_file: Path,
                                num_processes: int = 4, clean: bool = False) -> dict:
    """Reuse `output_file` if it fingerprints these files and SR degradations unchanged (and not `clean`), else redo it."""
    output_file = Path(output_file)
    if output_file.is_file() and not clean:
        try:
            fingerprint = json.loads(output_file.read_text())
        except json.JSONDecodeError:
            fingerprint = {}  # a damaged file is simply computed again
        stamps = {case_id: file_stamps(files) for case_id, files in cases.items()}
        measured = {c: sorted(keys) for c, keys in fingerprint.get("residual_statistics_per_channel", {}).items()}
        wanted = {str(c): sorted(keys) for c, keys in sr_degradations(spec).items()}
        if (fingerprint.get("case_identifiers") == sorted(cases) and fingerprint.get("file_stamps") == stamps
                and measured == wanted):
            return fingerprint
    fingerprint = extract_fingerprint(spec, cases, num_processes)
    atomic_write_json(fingerprint, output_file)
    return fingerprint
