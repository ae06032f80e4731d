"""The experts an ensembler checkpoint records: each one's file inside the dataset's results folder, unchanged.

An ensembler is loaded (for prediction, export or a resumed training) only with the exact expert checkpoints it
was trained with: the records' SHA-256 must equal the files'.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from diffens_auto.errors import DiffensError
from diffens_auto.hashing import file_sha256


class ExpertMismatchError(DiffensError, ValueError):
    """Experts that cannot be fused into this ensembler (different targets, quantities, conditions or files)."""


def recorded_expert_files(state: dict, dataset_results: Path, ensembler: str) -> list[tuple[dict, Path, str]]:
    """(record, file, SHA-256) of every expert an ensembler checkpoint records, each checked present and unchanged.

    The records' paths are relative to the dataset's results folder; one outside it, a missing file or a file
    whose SHA-256 differs from the record raises ExpertMismatchError naming the expert and the fix.
    """
    retrain = (f"diffens_train {dataset_results.name} {state.get('task')} {state.get('configuration')} "
               f"-f {state.get('fold')} -p {state.get('plans_name')}")
    found = []
    for record in state.get("experts") or []:
        relative = PurePosixPath(str(record["checkpoint"]))
        if relative.is_absolute() or ".." in relative.parts:
            raise ExpertMismatchError(f"Ensembler {ensembler} records expert {record['name']} at {relative}, outside "
                                      f"the dataset's results folder. Fix: retrain the ensembler ({retrain}).")
        path = dataset_results / relative
        if not path.is_file():
            raise ExpertMismatchError(
                f"Ensembler {ensembler} needs its expert {record['name']} ({relative}), which is missing. Fix: "
                f"restore that exact expert checkpoint (or install the exported model again), or retrain the "
                f"ensembler on the experts you have ({retrain}).")
        sha256 = file_sha256(path)
        if sha256 != record["sha256"]:
            raise ExpertMismatchError(
                f"Ensembler {ensembler} was trained with expert {record['name']} ({relative}, SHA-256 "
                f"{record['sha256'][:12]}...), but that file has changed since (SHA-256 {sha256[:12]}... now): "
                f"the ensembler is refused. Fix: restore the expert checkpoint it was trained with, or retrain the "
                f"ensembler ({retrain}).")
        found.append((record, path, sha256))
    return found
