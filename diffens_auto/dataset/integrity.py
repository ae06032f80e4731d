"""`--verify_dataset_integrity`: every case complete, readable, 3D, finite, non-empty, one geometry per case."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffens_auto.dataset.cases import find_training_cases
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec
from diffens_auto.imageio import ImageReadError, check_same_geometry, count_nonfinite_voxels, read_image
from diffens_auto.workers import map_in_workers


def check_image_file(path: Path) -> tuple[list[str], dict | None]:
    """Return (problems, geometry props) for one channel file: readable, 3D, finite, not all zero."""
    try:
        array, props = read_image(path)
    except ImageReadError as e:
        return [str(e)], None
    problems = []
    nonfinite = count_nonfinite_voxels(path, array)
    if nonfinite:
        problems.append(f"{path}: {nonfinite} voxel(s) are NaN or infinite. Fix: replace them (e.g. with 0) "
                        "or re-export the image.")
    elif not np.any(array):
        problems.append(f"{path}: the image is empty (all voxels are 0). Fix: remove the case or replace the file.")
    return problems, props


def check_case(case_id: str, files: list[Path], label_file: Path | None = None) -> list[str]:
    """Return every problem of one case (all channels and its optional label map)."""
    problems, reference = [], None
    for f in files + ([label_file] if label_file is not None else []):
        file_problems, props = check_image_file(f)
        if f is label_file:
            # An all-zero label map is legitimate (no structure present).
            file_problems = [p for p in file_problems if "empty" not in p]
        problems += file_problems
        if props is None:
            continue
        if reference is None:
            reference = (f, props)
            continue
        mismatch = check_same_geometry(reference[1], props)
        if mismatch:
            problems.append(f"case {case_id}: {f} and {reference[0]} differ in geometry ({'; '.join(mismatch)}). "
                            "Fix: resample all channels of a case onto one grid (same shape, spacing, origin, "
                            "direction) before using them.")
    return problems


def verify_dataset_integrity(spec: DatasetSpec, num_processes: int = 4) -> None:
    """Check every training case and raise one DatasetError that lists all problems found."""
    cases = find_training_cases(spec)
    problems = []
    if len(cases) != spec.num_training:
        problems.append(f"{spec.json_file}: numTraining is {spec.num_training} but {len(cases)} case(s) were "
                        f"found. Fix: set numTraining to {len(cases)} or add the missing cases.")
    labels_folder = spec.path / "labelsTr"
    jobs = []
    for case_id, files in sorted(cases.items()):
        label = labels_folder / f"{case_id}{spec.file_ending}"
        jobs.append((case_id, files, label if label.is_file() else None))
    results = map_in_workers(check_case, jobs, num_processes, "integrity check")
    problems += [p for r in results for p in r]
    if problems:
        raise DatasetError(f"Dataset {spec.path} failed the integrity check with {len(problems)} problem(s):\n  "
                           + "\n  ".join(problems))
