"""Plans files on disk: which one a command uses (`-p NAME`, or the only one there is) and loading it."""
from __future__ import annotations

import json
from pathlib import Path

from diffens_auto.errors import DiffensError
from diffens_auto.planning.plans_schema import PlansError, validate_plans

_NOT_PLANS = {"dataset.json", "dataset_fingerprint.json", "splits_final.json"}


class PlansNotFoundError(DiffensError, LookupError):
    """The plans file a command needs is missing or ambiguous."""


def available_plans(preprocessed_dataset_folder: str | Path) -> list[str]:
    """Return the names of the plans files in a preprocessed dataset folder."""
    folder = Path(preprocessed_dataset_folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.name not in _NOT_PLANS)


def find_plans_file(preprocessed_dataset_folder: str | Path, plans_name: str | None = None) -> Path:
    """Return the plans file named `plans_name`, or the only one in the folder; explain what exists otherwise."""
    folder = Path(preprocessed_dataset_folder)
    names = available_plans(folder)
    if plans_name is not None:
        if plans_name in names:
            return folder / f"{plans_name}.json"
        raise PlansNotFoundError(f"No plans '{plans_name}' in {folder} (found: {names or 'none'}). Fix: run "
                                 "diffens_plan_and_preprocess for this dataset (-pl tiny writes diffensPlans_tiny) "
                                 "or pass one of the found names with -p.")
    if len(names) == 1:
        return folder / f"{names[0]}.json"
    if not names:
        raise PlansNotFoundError(f"No plans in {folder}. Fix: run diffens_plan_and_preprocess -d <dataset> first.")
    raise PlansNotFoundError(f"Several plans in {folder}: {names}. Fix: choose one with -p, e.g. -p {names[0]}.")


def load_plans(preprocessed_dataset_folder: str | Path, plans_name: str | None = None) -> dict:
    """Load and check a plans file (see find_plans_file for which one)."""
    path = find_plans_file(preprocessed_dataset_folder, plans_name)
    try:
        plans = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PlansError(f"{path}: not valid JSON ({e}). Fix: correct the edit or re-run "
                         "diffens_plan_and_preprocess --no_pp to write it again.") from None
    validate_plans(plans, source=str(path))
    return plans
