"""The API behind `diffens_plan_and_preprocess`: fingerprint, plan, split and preprocess one dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffens_auto import paths
from diffens_auto.atomic import atomic_path, atomic_write_json
from diffens_auto.dataset.cases import find_training_cases
from diffens_auto.dataset.dataset_json import DatasetSpec, load_dataset_json
from diffens_auto.dataset.integrity import verify_dataset_integrity
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.dataset.splits import ensure_splits
from diffens_auto.errors import MissingFileError
from diffens_auto.fingerprint import load_or_extract_fingerprint
from diffens_auto.planning import plan_experiment
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.preprocessing.preprocessor import preprocess_dataset


def _raw_dataset(dataset: str | int) -> tuple[str, DatasetSpec]:
    name = resolve_dataset_name(dataset, [paths.raw_folder()])
    return name, load_dataset_json(paths.raw_folder() / name)


def tasks_for_planner(spec: DatasetSpec) -> dict:
    """Return the dataset's tasks as the plain dict the planner reads."""
    return {name: {"target": t.target, "inputs": list(t.inputs),
                   "degradation": t.degradation.to_dict() if t.degradation else None}
            for name, t in spec.tasks.items()}


def extract_fingerprint_for_dataset(dataset: str | int, num_processes: int = 4, verify_integrity: bool = False,
                                    clean: bool = False) -> dict:
    """Check (optionally) and fingerprint a raw dataset; write dataset.json and the fingerprint to preprocessed."""
    name, spec = _raw_dataset(dataset)
    cases = find_training_cases(spec)
    if verify_integrity:
        verify_dataset_integrity(spec, num_processes)
    out = paths.preprocessed_folder() / name
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "dataset.json") as tmp:
        shutil.copyfile(spec.json_file, tmp)
    return load_or_extract_fingerprint(spec, cases, out / "dataset_fingerprint.json", num_processes, clean)


def plan_dataset(dataset: str | int, preset: str = "default", gpu_memory_target_gb: float = 24.0) -> Path:
    """Plan from an existing fingerprint; write `<plans_name>.json` and `splits_final.json`; return the plans path."""
    name, spec = _raw_dataset(dataset)
    out = paths.preprocessed_folder() / name
    fingerprint_file = out / "dataset_fingerprint.json"
    if not fingerprint_file.is_file():
        raise MissingFileError(f"{fingerprint_file} not found. Fix: run diffens_extract_fingerprint -d {dataset} "
                                "(or diffens_plan_and_preprocess, which does every step).")
    fingerprint = json.loads(fingerprint_file.read_text())
    plans = plan_experiment(fingerprint, tasks_for_planner(spec), spec.channel_names, name,
                            gpu_memory_target_gb=gpu_memory_target_gb, preset=preset)
    plans_file = out / f"{plans['plans_name']}.json"
    atomic_write_json(plans, plans_file)
    ensure_splits(out / "splits_final.json", fingerprint["case_identifiers"])
    return plans_file


def preprocess_for_dataset(dataset: str | int, plans_name: str | None = None, num_processes: int = 4,
                           clean: bool = False) -> Path:
    """Preprocess every training case with a plans file; return the folder holding the preprocessed cases."""
    name, spec = _raw_dataset(dataset)
    out = paths.preprocessed_folder() / name
    plans = load_plans(out, plans_name)
    target = out / plans["data_identifier"]
    preprocess_dataset(find_training_cases(spec), plans, target, num_processes=num_processes, clean=clean)
    return target


def plan_and_preprocess(dataset: str | int, preset: str = "default", *, gpu_memory_target_gb: float = 24.0,
                        num_processes: int = 4, verify_integrity: bool = False, no_pp: bool = False,
                        clean: bool = False) -> Path:
    """Run every step for one dataset: integrity (optional), fingerprint, plans, splits, preprocessing."""
    extract_fingerprint_for_dataset(dataset, num_processes, verify_integrity, clean)
    plans_file = plan_dataset(dataset, preset, gpu_memory_target_gb)
    if not no_pp:
        preprocess_for_dataset(dataset, plans_file.stem, num_processes, clean)
    return plans_file
