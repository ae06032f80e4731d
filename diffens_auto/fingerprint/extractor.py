"""Fingerprint extraction, one case at a time (in worker processes), pooled into `dataset_fingerprint.json`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffens_auto.atomic import atomic_write_json
from diffens_auto.dataset.cases import file_stamps
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec
from diffens_auto.foreground import bounding_box, nonzero_mask
from diffens_auto.imageio import count_nonfinite_voxels, read_case
from diffens_auto.workers import map_in_workers

FOREGROUND_SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 99.5)


def case_fingerprint(case_id: str, files: list[Path], seed: int = 0) -> dict:
    """Read one case and return its spacing, shapes and a seeded sample of foreground intensities per channel."""
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
    return {
        "case_id": case_id,
        "spacing": [float(s) for s in props["spacing"]],
        "shape_before_crop": [int(s) for s in data.shape[1:]],
        "shape_after_crop": [int(hi - lo) for lo, hi in bbox],
        "foreground_samples": foreground[:, np.sort(take)].astype(np.float64),
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
    jobs = [(case_id, files, i) for i, (case_id, files) in enumerate(sorted(cases.items()))]
    results = map_in_workers(case_fingerprint, jobs, num_processes, "fingerprint")
    samples = np.concatenate([r["foreground_samples"] for r in results], axis=1)
    return {
        "case_identifiers": [r["case_id"] for r in results],
        "file_stamps": {case_id: file_stamps(files) for case_id, files, _ in jobs},
        "spacings": [r["spacing"] for r in results],
        "shapes_before_crop": [r["shape_before_crop"] for r in results],
        "shapes_after_crop": [r["shape_after_crop"] for r in results],
        "channel_names": {str(k): v for k, v in spec.channel_names.items()},
        "foreground_intensity_properties_per_channel": {
            str(c): _intensity_statistics(samples[c]) for c in range(samples.shape[0])},
    }


def load_or_extract_fingerprint(spec: DatasetSpec, cases: dict[str, list[Path]], output_file: Path,
                                num_processes: int = 4, clean: bool = False) -> dict:
    """Reuse `output_file` if it fingerprints exactly these files unchanged (and not `clean`), else extract it."""
    output_file = Path(output_file)
    if output_file.is_file() and not clean:
        try:
            fingerprint = json.loads(output_file.read_text())
        except json.JSONDecodeError:
            fingerprint = {}  # a damaged file is simply computed again
        stamps = {case_id: file_stamps(files) for case_id, files in cases.items()}
        if fingerprint.get("case_identifiers") == sorted(cases) and fingerprint.get("file_stamps") == stamps:
            return fingerprint
    fingerprint = extract_fingerprint(spec, cases, num_processes)
    atomic_write_json(fingerprint, output_file)
    return fingerprint
