"""Prediction inputs made from high-resolution scans (`diffens_degrade`), so users can test a model on known truth.

For each case of the input folder, the channels the task conditions on are written to the output folder under the
same file names:
  - the target channel, when the task has a degradation: degraded with it (`degrade_image`) and written, as float32,
    on its low-resolution grid (block centres: spacing × f, origin moved half a block, direction unchanged);
  - the task's other inputs (e.g. T1ce for a task "both"): copied byte for byte, geometry included.
A task without a degradation (modality translation) has nothing to degrade: its inputs are only copied.

Each case is read completely before anything of it is written, every write is atomic, and a case that fails
(an unreadable or 4D file, a missing channel) is reported in the summary while the others are written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from diffens_auto.atomic import atomic_path
from diffens_auto.dataset.dataset_json import DatasetError
from diffens_auto.dataset.lookup import find_dataset_json
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.imageio import ImageReadError, read_image, write_image
from diffens_auto.inference.input_cases import find_input_cases
from diffens_auto.operators.degrade import degrade_image
from diffens_auto.workers import map_in_workers

WRITTEN, FAILED = "written", "failed"


def degrade_case(case_id: str, files: dict[int, str], output_folder: str, target: int,
                 degradation: dict | None) -> dict:
    """Write one case's prediction inputs (see the module docstring); returns its summary entry, never raises."""
    output_folder = Path(output_folder)
    try:
        # Read (and so check) every channel first: a bad channel must not leave half a case behind.
        images = {channel: read_image(path) for channel, path in files.items()}
        written = []
        for channel, path in sorted(files.items()):
            destination = output_folder / Path(path).name
            if channel == target and degradation is not None:
                lowres, lowres_props = degrade_image(*images[channel], degradation)
                write_image(lowres, lowres_props, destination)
            else:
                with atomic_path(destination) as tmp:
                    shutil.copy2(path, tmp)
            written.append(destination.name)
    except (ImageReadError, ValueError, OSError) as e:
        return {"case": case_id, "status": FAILED, "files": [], "message": str(e)}
    return {"case": case_id, "status": WRITTEN, "files": written, "message": ""}


def degrade_folder(input_folder, output_folder, dataset, task: str, *, num_processes: int = 1,
                   verbose: bool = True) -> dict:
    """Write `task`'s prediction inputs for every case of `input_folder` into `output_folder`; returns a summary.

    Summary: {"dataset", "task", "degradation" (dict or None), "note", "input_folder", "output_folder",
    "num_written", "num_failed", "cases": [{"case", "status" ("written" | "failed"), "files", "message"}]}.
    Raises DatasetError for an unknown task or an unusable input folder; a bad case only fails that case.
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if input_folder.resolve() == output_folder.resolve():
        raise ValueError(f"-o {output_folder} is the input folder: the degraded target would replace its "
                         "high-resolution scan. Fix: give another output folder.")
    spec = find_dataset_json(dataset)
    if task not in spec.tasks:
        raise DatasetError(f"{spec.json_file}: no task '{task}' (tasks: {sorted(spec.tasks)}). Fix: pass one of "
                           "them with -t.")
    task_spec = spec.tasks[task]
    channels = task_spec.condition_channels
    degradation = task_spec.degradation.to_dict() if task_spec.degradation is not None else None
    cases = find_input_cases(input_folder, spec, channels)
    output_folder.mkdir(parents=True, exist_ok=True)
    jobs, entries = [], {}
    for case in cases:
        if case.problem is not None:
            entries[case.case_id] = {"case": case.case_id, "status": FAILED, "files": [], "message": case.problem}
        else:
            files = {c: str(case.files[c]) for c in channels}
            jobs.append((case.case_id, files, str(output_folder), task_spec.target, degradation))
    for entry in map_in_workers(degrade_case, jobs, num_processes, "degrade", verbose):
        entries[entry["case"]] = entry
    names = ", ".join(spec.channel_names[c] for c in channels)
    note = (f"{spec.channel_names[task_spec.target]} degraded ({degradation['type']}, factor "
            f"{list(degradation['factor'])}); other inputs copied" if degradation is not None else
            f"no degradation, so its inputs ({names}) are only copied, unchanged")
    summary = [entries[k] for k in sorted(entries)]
    return {"dataset": resolve_dataset_name(dataset), "task": task, "degradation": degradation, "note": note,
            "input_folder": str(input_folder), "output_folder": str(output_folder),
            "num_written": sum(e["status"] == WRITTEN for e in summary),
            "num_failed": sum(e["status"] == FAILED for e in summary), "cases": summary}
