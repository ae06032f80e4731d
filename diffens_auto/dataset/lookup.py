"""Find a dataset's dataset.json where a user who only predicts may have it: raw, preprocessed, or an installed model.

Order: diffens_raw/DatasetXXX/dataset.json, then diffens_preprocessed/DatasetXXX/dataset.json, then the copy beside
any trained (or installed, `diffens_install_pretrained_model_from_zip`) model,
diffens_results/DatasetXXX/TASK/CONFIG__PLANS/dataset.json (the first in sorted order). Folders whose environment
variable is not set are skipped, so a machine with only diffens_results works.
"""
from __future__ import annotations

from pathlib import Path

from diffens_auto import paths
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec, load_dataset_json
from diffens_auto.dataset.naming import resolve_dataset_name


def _set_folder(getter) -> Path | None:
    try:
        return getter()
    except paths.PathNotSetError:
        return None


def dataset_json_candidates(dataset_name: str) -> list[Path]:
    """Folders that may hold `dataset_name`'s dataset.json, in lookup order (existing or not)."""
    candidates = []
    for getter in (paths.raw_folder, paths.preprocessed_folder):
        root = _set_folder(getter)
        if root is not None:
            candidates.append(root / dataset_name)
    results = _set_folder(paths.results_folder)
    if results is not None:
        candidates += sorted(p.parent for p in (results / dataset_name).glob("*/*/dataset.json"))
    return candidates


def find_dataset_json(dataset: str | int) -> DatasetSpec:
    """The validated dataset.json of `dataset` (id or DatasetXXX_Name): raw, else preprocessed, else a model's."""
    name = resolve_dataset_name(dataset)
    candidates = dataset_json_candidates(name)
    for folder in candidates:
        if (folder / "dataset.json").is_file():
            return load_dataset_json(folder)
    looked = ", ".join(str(f / "dataset.json") for f in candidates) or "nowhere (no data folder variable is set)"
    raise DatasetError(f"{name}: no dataset.json found (looked in {looked}). Fix: set diffens_raw to the folder "
                       f"holding {name}/dataset.json, or install the trained model "
                       "(diffens_install_pretrained_model_from_zip), whose model folders carry a copy.")
