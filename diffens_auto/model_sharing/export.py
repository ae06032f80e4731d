"""Pack trained models into one zip for another machine (`diffens_export_model_to_zip`), as nnU-Net's export.

The zip holds paths relative to diffens_results, so installing is extracting it there:

    DatasetXXX_Name/diffens_model_manifest.json                      what is inside, with SHA-256 (see below)
    DatasetXXX_Name/TASK/CONFIG__PLANS/{plans.json, dataset.json, dataset_fingerprint.json}
    DatasetXXX_Name/TASK/CONFIG__PLANS/fold_F/{checkpoint_final.pth, progress.png, training_log_*.txt,
                                               validation/summary.json}

An ensembler is useless without the exact experts it was trained with: for every exported ensembler checkpoint
the expert checkpoints its `experts` records name (paths relative to the dataset's results folder) go in too,
with their model folders' json files, after their SHA-256 is checked against the records.

Manifest: {"format_version", "diffens_auto_version", "created" (UTC, ISO 8601), "dataset_name",
"models": [{"task", "configuration", "plans", "fold", "checkpoints"}], "experts": [{"ensembler", "name",
"checkpoint", "sha256"}], "files": [{"path", "size", "sha256"}]}.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Sequence

import diffens_auto
from diffens_auto import paths
from diffens_auto.atomic import atomic_path
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.errors import DiffensError
from diffens_auto.hashing import copy_with_sha256
from diffens_auto.model_folder.checkpoints import FINAL, load_checkpoint
from diffens_auto.model_folder.files import DATASET_FILE, MODEL_FILES, PLANS_FILE
from diffens_auto.model_folder.location import ModelLocation, model_folders, recorded_location, trained_fold_folders
from diffens_auto.model_folder.recorded_experts import ExpertMismatchError, recorded_expert_files

MANIFEST_FILE = "diffens_model_manifest.json"
MANIFEST_FORMAT_VERSION = 1
REQUIRED_MODEL_FILES = (PLANS_FILE, DATASET_FILE)
VALIDATION_SUMMARY = PurePosixPath("validation") / "summary.json"


class ModelSharingError(DiffensError, ValueError):
    """A model cannot be exported or installed as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class ExportedFold:
    """One fold folder of one model folder (TASK/CONFIG__PLANS/fold_F) chosen for export."""

    task: str
    configuration: str
    plans_name: str
    fold: str
    folder: Path


def safe_member_path(name: str, where: str) -> PurePosixPath:
    """`name` as a relative POSIX path that stays inside its root; ModelSharingError for absolute paths or `..`."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or name.startswith("/") or path.is_absolute() or ":" in path.parts[0]
            or any(part in ("..", ".") for part in name.rstrip("/").split("/"))):
        raise ModelSharingError(f"{where}: unsafe path {name!r} (absolute, or with '..'): it could write outside "
                                "diffens_results. Fix: use a zip made by diffens_export_model_to_zip.")
    return path


def _model_folders(dataset_results: Path, tasks, configurations, plans_name) -> list[ModelLocation]:
    """Every TASK/CONFIG__PLANS folder that matches the filters (None: any)."""
    return [m for m in model_folders(dataset_results)
            if (tasks is None or m.task in tasks) and (plans_name is None or m.plans_name == plans_name)
            and (configurations is None or m.configuration in configurations)]


def select_folds(dataset_name: str, *, tasks=None, configurations=None, folds=(0,), plans_name=None,
                 checkpoints=(FINAL,)) -> list[ExportedFold]:
    """The fold folders to export: those holding every requested checkpoint (all of them where -c names them)."""
    dataset_results = paths.results_folder() / dataset_name
    if not dataset_results.is_dir():
        raise ModelSharingError(f"No trained models of {dataset_name}: {dataset_results} does not exist. Fix: "
                                "train one (diffens_train) or check the diffens_results variable.")
    models = _model_folders(dataset_results, tasks, configurations, plans_name)
    for wanted, field, flag in ((tasks, "task", "-t"), (configurations, "configuration", "-c")):
        for name in (wanted or ()):
            if not any(getattr(m, field) == name for m in models):
                raise ModelSharingError(f"{flag} {name}: no such model folder in {dataset_results} (with the other "
                                        f"filters given). Trained there: {_trained_list(dataset_results)}.")
    selected, missing = [], []
    for model in models:
        for fold in folds:
            fold_folder = replace(model, fold=fold).fold_folder
            absent = [c for c in checkpoints if not (fold_folder / c).is_file()]
            if not absent:
                selected.append(ExportedFold(model.task, model.configuration, model.plans_name, str(fold),
                                             fold_folder))
            elif configurations is not None:  # named explicitly: a missing checkpoint is a mistake, not a skip
                missing += [str(fold_folder / c) for c in absent]
    if missing:
        raise ModelSharingError("Requested checkpoints are missing: " + ", ".join(missing) + ". Fix: train those "
                                "folds (diffens_train), or choose others with -f / -chk.")
    if not selected:
        raise ModelSharingError(f"Nothing to export in {dataset_results}: no model folder has fold(s) "
                                f"{list(folds)} with {list(checkpoints)}. Trained there: "
                                f"{_trained_list(dataset_results)}. Fix: adjust -t / -c / -f / -p / -chk.")
    return selected


def _trained_list(dataset_results: Path) -> str:
    names = sorted(str(folder.relative_to(dataset_results)) for folder in trained_fold_folders(dataset_results, FINAL))
    return ", ".join(names) or "nothing"


def _model_json_files(model_folder: Path, required: bool) -> list[Path]:
    if required:
        for name in REQUIRED_MODEL_FILES:
            if not (model_folder / name).is_file():
                raise ModelSharingError(f"{model_folder / name} is missing, so the model is not self-contained. "
                                        "Fix: run its diffens_train command once more with --c (it writes the model "
                                        "folder's json files), or copy it from diffens_preprocessed/DATASET (the plans file "
                                        "PLANS.json becomes plans.json).")
    return [model_folder / n for n in MODEL_FILES if (model_folder / n).is_file()]


def _fold_files(fold: ExportedFold, checkpoints: Sequence[str]) -> list[Path]:
    files = [fold.folder / c for c in checkpoints]
    files += [p for p in [fold.folder / "progress.png", fold.folder / VALIDATION_SUMMARY] if p.is_file()]
    files += sorted(fold.folder.glob("training_log_*.txt"))
    return files


def verified_experts(checkpoint_path: Path, dataset_results: Path) -> list[dict]:
    """The expert records of an ensembler checkpoint ([] for an expert), each checked: file present, same SHA-256."""
    checkpoint = load_checkpoint(checkpoint_path)
    ensembler = checkpoint_path.relative_to(dataset_results).as_posix()
    try:
        found = recorded_expert_files(checkpoint, dataset_results, ensembler)
    except ExpertMismatchError as e:
        raise ModelSharingError(str(e)) from None
    return [{"ensembler": ensembler, "name": record["name"],
             "checkpoint": path.relative_to(dataset_results).as_posix(), "sha256": sha256}
            for record, path, sha256 in found]


def collect_export(dataset_name: str, folds: list[ExportedFold], checkpoints: Sequence[str]):
    """What an export holds: ({path relative to diffens_results: file}, {expert path: recorded SHA-256}, records)."""
    results = paths.results_folder()
    dataset_results = results / dataset_name
    files: dict[str, Path] = {}

    def add(path: Path) -> None:
        files.setdefault(path.relative_to(results).as_posix(), path)

    expected, experts = {}, []
    for fold in folds:
        for path in _model_json_files(fold.folder.parent, required=True) + _fold_files(fold, checkpoints):
            add(path)
        for checkpoint in checkpoints:
            for record in verified_experts(fold.folder / checkpoint, dataset_results):
                expert_path = dataset_results / record["checkpoint"]
                expert_folder = recorded_location(dataset_results, record["checkpoint"]).model_folder
                for path in [expert_path] + _model_json_files(expert_folder, required=False):
                    add(path)
                expected[f"{dataset_name}/{record['checkpoint']}"] = record["sha256"]
                experts.append(record)
    return files, expected, experts


def _write_member(archive: zipfile.ZipFile, source: Path, name: str) -> tuple[int, str]:
    """Copy `source` into the archive as `name` (deflated), hashing the bytes written; returns (size, SHA-256)."""
    info = zipfile.ZipInfo.from_file(source, name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(source, "rb") as f, archive.open(info, "w") as member:
        return copy_with_sha256(f, member)


def export_model_to_zip(dataset, output_file, *, tasks: Sequence[str] | None = None,
                        configurations: Sequence[str] | None = None, folds=(0,), plans_name: str | None = None,
                        checkpoints: Sequence[str] = (FINAL,)) -> Path:
    """Write trained models of `dataset` (default: every trained task/configuration of fold 0) into a zip; returns it.

    tasks / configurations / plans_name: filters (None = all); folds: fold numbers or "all"; checkpoints: file names
    in the fold folders. Ensemblers bring their verified experts along. The zip appears atomically.
    """
    dataset_name = resolve_dataset_name(dataset)
    checkpoints = tuple(checkpoints)
    folds = [int(f) if str(f).isdigit() else str(f) for f in folds]
    selected = select_folds(dataset_name, tasks=list(tasks) if tasks else None,
                            configurations=list(configurations) if configurations else None, folds=folds,
                            plans_name=plans_name, checkpoints=checkpoints)
    files, expected, experts = collect_export(dataset_name, selected, checkpoints)
    output_file = Path(output_file)
    listed = []
    with atomic_path(output_file) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for name in sorted(files):
                size, sha256 = _write_member(archive, files[name], name)
                if expected.get(name, sha256) != sha256:
                    raise ModelSharingError(f"{files[name]} changed while it was being exported (SHA-256 "
                                            f"{sha256[:12]}... instead of the ensembler's record). Fix: export "
                                            "again once nothing writes to the results folder.")
                listed.append({"path": name, "size": size, "sha256": sha256})
            manifest = {
                "format_version": MANIFEST_FORMAT_VERSION, "diffens_auto_version": diffens_auto.__version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dataset_name": dataset_name,
                "models": [{"task": f.task, "configuration": f.configuration, "plans": f.plans_name,
                            "fold": f.fold, "checkpoints": list(checkpoints)} for f in selected],
                "experts": experts, "files": listed}
            archive.writestr(f"{dataset_name}/{MANIFEST_FILE}", json.dumps(manifest, indent=2) + "\n")
    return output_file
