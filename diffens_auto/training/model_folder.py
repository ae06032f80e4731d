"""The files beside a configuration's folds that make a trained model self-contained (as nnU-Net's model folder).

diffens_results/DatasetXXX/TASK/CONFIG__PLANS/ holds plans.json, dataset.json and dataset_fingerprint.json, the
copies the model was trained with, so prediction (and an exported model on another machine) needs no
preprocessed folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from diffens_auto.atomic import atomic_write_json

PLANS_FILE, DATASET_FILE, FINGERPRINT_FILE = "plans.json", "dataset.json", "dataset_fingerprint.json"


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
