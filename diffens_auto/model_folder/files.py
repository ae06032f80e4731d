"""The files beside a configuration's folds that make a trained model self-contained (as nnU-Net's model folder).

diffens_results/DatasetXXX/TASK/CONFIG__PLANS/ holds plans.json, dataset.json and dataset_fingerprint.json, the
copies the model was trained with, so prediction (and an exported model on another machine) needs no
preprocessed folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from diffens_auto import paths
from diffens_auto.atomic import atomic_write_json
from diffens_auto.dataset.dataset_json import DatasetSpec, load_dataset_json
from diffens_auto.dataset.lookup import find_dataset_json
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.planning.plans_schema import validate_plans

PLANS_FILE, DATASET_FILE, FINGERPRINT_FILE = "plans.json", "dataset.json", "dataset_fingerprint.json"
MODEL_FILES = (PLANS_FILE, DATASET_FILE, FINGERPRINT_FILE)


def write_model_files(model_folder: str | Path, plans: dict, preprocessed_dataset_folder: str | Path) -> None:
    """Write plans.json, dataset.json and dataset_fingerprint.json into `model_folder` (only when they changed)."""
    model_folder = Path(model_folder)
    contents = {PLANS_FILE: plans}
    for name in (DATASET_FILE, FINGERPRINT_FILE):
        source = Path(preprocessed_dataset_folder) / name
        if source.is_file():
            contents[name] = json.loads(source.read_text())
    for name, content in contents.items():
        path = model_folder / name
        if not path.is_file() or json.loads(path.read_text()) != json.loads(json.dumps(content)):
            atomic_write_json(content, path)


def load_model_plans(model_folder: Path, dataset_name: str, plans_name: str) -> dict:
    """The plans a configuration was trained with (its plans.json), else the preprocessed folder's plans file."""
    path = Path(model_folder) / PLANS_FILE
    if path.is_file():
        plans = json.loads(path.read_text(encoding="utf-8"))
        validate_plans(plans, source=str(path))
        return plans
    return load_plans(paths.preprocessed_folder() / dataset_name, plans_name)


def load_model_dataset_json(model_folder: Path, dataset_name: str) -> DatasetSpec:
    """The dataset.json a configuration was trained with (its copy), else the dataset's (`find_dataset_json`)."""
    if (Path(model_folder) / DATASET_FILE).is_file():
        return load_dataset_json(model_folder)
    return find_dataset_json(dataset_name)
