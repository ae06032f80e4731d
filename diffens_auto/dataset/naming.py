"""Dataset names: `-d 501` and `-d Dataset501_Name` both resolve, as in nnU-Net."""
from __future__ import annotations

import re
from pathlib import Path

from diffens_auto import paths
from diffens_auto.errors import DiffensError

_DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9._-]+$")


class DatasetNotFoundError(DiffensError, LookupError):
    """No (or more than one) dataset folder matches the identifier the user gave."""


def dataset_id(name: str) -> int:
    """Return the numeric id of a `DatasetXXX_Name` folder name."""
    match = _DATASET_NAME.match(name)
    if match is None:
        raise DatasetNotFoundError(f"-d {name!r}: not a dataset name of the form DatasetXXX_Name (XXX = three "
                                   "digits, e.g. Dataset501_Brains). Fix: pass the folder's exact name or its id.")
    return int(match.group(1))


def _candidate_roots() -> list[Path]:
    roots = []
    for getter in (paths.raw_folder, paths.preprocessed_folder, paths.results_folder):
        try:
            roots.append(getter())
        except paths.PathNotSetError:
            continue
    return roots


def resolve_dataset_name(identifier: str | int, roots: list[Path] | None = None) -> str:
    """Turn `501`, `"501"` or `"Dataset501_Name"` into the dataset's folder name."""
    text = str(identifier)
    if text.startswith("Dataset"):
        dataset_id(text)
        return text
    if not text.isdigit():
        raise DatasetNotFoundError(f"-d {text!r}: give a dataset id (e.g. 501) or a full name (Dataset501_Name).")
    prefix = f"Dataset{int(text):03d}_"
    roots = _candidate_roots() if roots is None else roots
    if not roots:
        # Name the variable the user most likely needs.
        paths.raw_folder()
    names = sorted({p.name for r in roots if r.is_dir() for p in r.iterdir() if p.is_dir() and p.name.startswith(prefix)})
    if len(names) == 1:
        return names[0]
    if not names:
        raise DatasetNotFoundError(f"No dataset with id {int(text)} (a folder {prefix}*) in {', '.join(map(str, roots))}. "
                                   "Fix: check the id, or the diffens_raw / diffens_preprocessed variables.")
    raise DatasetNotFoundError(f"Dataset id {int(text)} is ambiguous: {names}. Fix: pass the full name with -d.")
