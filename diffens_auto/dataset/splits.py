"""Cross-validation splits (`splits_final.json`): 5 seeded folds, kept once written, so folds stay stable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffens_auto.atomic import atomic_write_json
from diffens_auto.dataset.dataset_json import DatasetError
from diffens_auto.errors import MissingFileError

DEFAULT_NUM_FOLDS = 5
DEFAULT_SEED = 12345
SPLITS_FILE = "splits_final.json"


def make_splits(case_ids: list[str], num_folds: int = DEFAULT_NUM_FOLDS, seed: int = DEFAULT_SEED) -> list[dict]:
    """Split case ids into `num_folds` train/val folds with a seeded shuffle (fewer folds for tiny datasets)."""
    ids = sorted(case_ids)
    if len(ids) < 2:
        return [{"train": ids, "val": ids}]
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, min(num_folds, len(ids)))
    return [{"train": sorted(ids[i] for i in order if i not in set(f)), "val": sorted(ids[i] for i in f)}
            for f in folds]


def ensure_splits(path: str | Path, case_ids: list[str], seed: int = DEFAULT_SEED) -> list[dict]:
    """Return the splits at `path`, writing new ones if absent or if they no longer match the cases."""
    path = Path(path)
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e}). Fix: correct it, or delete it to get new seeded "
                               "splits (the folds of trained models then change).") from None
        if sorted(set(splits[0]["train"]) | set(splits[0]["val"])) == sorted(case_ids):
            return splits
    splits = make_splits(case_ids, seed=seed)
    atomic_write_json(splits, path)
    return splits


def split_case_ids(preprocessed_dataset_folder: str | Path, fold: int | str) -> tuple[list[str], list[str]]:
    """(train, val) case ids of a fold of splits_final.json; fold "all" trains and validates on every case."""
    path = Path(preprocessed_dataset_folder) / SPLITS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found. Fix: run diffens_plan_and_preprocess for this dataset.")
    splits = json.loads(path.read_text(encoding="utf-8"))
    if str(fold) == "all":
        cases = sorted(set(splits[0]["train"]) | set(splits[0]["val"]))
        return cases, cases
    if not str(fold).isdigit() or int(fold) >= len(splits):
        raise DatasetError(f"Fold {fold!r} does not exist: {path} has folds 0..{len(splits) - 1} (or use 'all').")
    return list(splits[int(fold)]["train"]), list(splits[int(fold)]["val"])
