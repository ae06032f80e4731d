"""dataset.json: nnU-Net's fields plus `tasks`, validated into a DatasetSpec with errors that name the fix."""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from diffens_auto.errors import DiffensError

SUPPORTED_DEGRADATIONS = ("avgpool",)
DEFAULT_SR_FACTOR = (4, 4, 4)
_CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DatasetError(DiffensError, ValueError):
    """A dataset (dataset.json or its files) is malformed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class DegradationSpec:
    """How a task's target is degraded to make its condition (factors in canonical X, Y, Z order)."""

    type: str
    factor: tuple[int, int, int]

    def to_dict(self) -> dict:
        """Return the JSON form used in plans."""
        return {"type": self.type, "factor": list(self.factor)}


@dataclass(frozen=True)
class TaskSpec:
    """One translation task: which channel is produced from which channels and/or its own degraded version."""

    name: str
    target: int
    inputs: tuple[int, ...]
    degradation: DegradationSpec | None

    @property
    def condition_channels(self) -> tuple[int, ...]:
        """Channels the condition is made of: the inputs, plus the target itself when it is degraded."""
        return self.inputs + ((self.target,) if self.degradation is not None else ())

    @property
    def channels_needed(self) -> tuple[int, ...]:
        """Channels a training case must have for this task."""
        return tuple(sorted(set(self.inputs) | {self.target}))


@dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset.json together with the folder it lives in."""

    path: Path
    name: str
    channel_names: dict[int, str]
    file_ending: str
    num_training: int
    labels: dict | None
    tasks: dict[str, TaskSpec]
    cases: dict[str, list[Path]] | None = field(default=None)

    @property
    def num_channels(self) -> int:
        """Number of image channels per case."""
        return len(self.channel_names)

    @property
    def json_file(self) -> Path:
        """The dataset.json this spec was read from."""
        return self.path / "dataset.json"


def degradation_key(degradation) -> str:
    """Name a degradation (a DegradationSpec or its dict): {"type": "avgpool", "factor": [4, 4, 4]} -> "avgpool_4x4x4"."""
    if isinstance(degradation, DegradationSpec):
        degradation = degradation.to_dict()
    return f"{degradation['type']}_{'x'.join(str(int(f)) for f in degradation['factor'])}"


def _fail(json_file: Path, field_name: str, problem: str, fix: str) -> DatasetError:
    return DatasetError(f"{json_file}: field '{field_name}': {problem}. Fix: {fix}")


def check_case_identifier(case_id: str, where: str) -> None:
    """Refuse case names that are not plain file-name stems (they would escape the dataset folders)."""
    if not isinstance(case_id, str) or not _CASE_ID_PATTERN.match(case_id) or ".." in case_id:
        raise DatasetError(
            f"{where}: case name {case_id!r} is not allowed: it must be a plain name of letters, digits, '.', "
            "'_' and '-' (no path separators, no '..'), since it becomes a file name in the preprocessed and "
            "results folders. Fix: rename the case."
        )


def _parse_channel_names(raw: dict, json_file: Path) -> dict[int, str]:
    key = "channel_names" if "channel_names" in raw else "modality" if "modality" in raw else None
    if key is None:
        raise _fail(json_file, "channel_names", "missing",
                    'add e.g. "channel_names": {"0": "T1", "1": "FLAIR"} (one entry per image channel)')
    names = raw[key]
    if not isinstance(names, dict) or not names:
        raise _fail(json_file, key, "must be a non-empty object", 'write e.g. {"0": "T1", "1": "FLAIR"}')
    try:
        parsed = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise _fail(json_file, key, f"keys must be channel numbers, got {list(names)}",
                    'use "0", "1", ... as keys') from None
    if sorted(parsed) != list(range(len(parsed))):
        raise _fail(json_file, key, f"channel numbers must be 0..{len(parsed) - 1}, got {sorted(parsed)}",
                    "number the channels consecutively from 0, matching the _XXXX suffix of the image files")
    if len(set(parsed.values())) != len(parsed):
        raise _fail(json_file, key, "channel names must be unique", "give every channel its own name")
    return parsed


def _channel_index(value, channel_names: dict[int, str], json_file: Path, field_name: str) -> int:
    by_name = {v: k for k, v in channel_names.items()}
    if isinstance(value, str) and value in by_name:
        return by_name[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in channel_names:
        return value
    raise _fail(json_file, field_name, f"unknown channel {value!r}",
                f"use one of the channel names {sorted(by_name)} from channel_names")


def _parse_degradation(raw, json_file: Path, field_name: str) -> DegradationSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "type" not in raw:
        raise _fail(json_file, field_name, "must be an object with a 'type'",
                    'write e.g. {"type": "avgpool", "factor": [4, 4, 4]}')
    if raw["type"] not in SUPPORTED_DEGRADATIONS:
        raise _fail(json_file, f"{field_name}.type", f"unknown degradation {raw['type']!r}",
                    f"use one of {list(SUPPORTED_DEGRADATIONS)}")
    factor = raw.get("factor", list(DEFAULT_SR_FACTOR))
    if isinstance(factor, int) and not isinstance(factor, bool):
        factor = [factor] * 3
    if (not isinstance(factor, list) or len(factor) != 3
            or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in factor)):
        raise _fail(json_file, f"{field_name}.factor", f"must be three positive integers, got {factor!r}",
                    "give the factor per canonical axis (X, Y, Z), e.g. [4, 4, 4] or [1, 1, 4]")
    return DegradationSpec(type=raw["type"], factor=tuple(factor))


def _parse_tasks(raw: dict, channel_names: dict[int, str], json_file: Path) -> dict[str, TaskSpec]:
    if "tasks" not in raw:
        if len(channel_names) > 1:
            warnings.warn(f"{json_file} has no 'tasks'; using a default 4x super-resolution task 'sr' of channel "
                          f"0 ({channel_names[0]}). Add 'tasks' to translate between channels (documentation/"
                          "dataset_format.md).", stacklevel=3)
        return {"sr": TaskSpec("sr", 0, (), DegradationSpec("avgpool", DEFAULT_SR_FACTOR))}
    tasks_raw = raw["tasks"]
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise _fail(json_file, "tasks", "must be a non-empty object",
                    'write e.g. {"sr": {"target": "FLAIR", "inputs": [], "degradation": {"type": "avgpool", '
                    '"factor": [4, 4, 4]}}}')
    tasks = {}
    for name, task in tasks_raw.items():
        where = f"tasks.{name}"
        check_case_identifier(name, f"{json_file}: field '{where}'")
        if not isinstance(task, dict) or "target" not in task:
            raise _fail(json_file, where, "must be an object with a 'target' channel",
                        'write e.g. {"target": "FLAIR", "inputs": ["T1ce"]}')
        target = _channel_index(task["target"], channel_names, json_file, f"{where}.target")
        inputs_raw = task.get("inputs", [])
        if not isinstance(inputs_raw, list):
            raise _fail(json_file, f"{where}.inputs", "must be a list of channel names", 'write e.g. ["T1ce"]')
        inputs = tuple(_channel_index(c, channel_names, json_file, f"{where}.inputs") for c in inputs_raw)
        if target in inputs:
            raise _fail(json_file, f"{where}.inputs", "the target cannot also be an input",
                        "use a degradation to condition on the target itself")
        degradation = _parse_degradation(task.get("degradation"), json_file, f"{where}.degradation")
        if not inputs and degradation is None:
            raise _fail(json_file, where, "has neither inputs nor a degradation, so there is nothing to condition on",
                        "add 'inputs' (other channels) and/or a 'degradation' of the target")
        tasks[name] = TaskSpec(name, target, inputs, degradation)
    return tasks


def _parse_explicit_cases(raw: dict, folder: Path, num_channels: int, json_file: Path) -> dict[str, list[Path]] | None:
    if "dataset" not in raw:
        return None
    entries = raw["dataset"]
    if not isinstance(entries, dict):
        raise _fail(json_file, "dataset", "must map case names to {'images': [...]}",
                    'write e.g. {"case_001": {"images": ["imagesTr/case_001_0000.nii.gz"]}}')
    cases = {}
    root = folder.resolve()
    for case_id, entry in entries.items():
        check_case_identifier(case_id, f"{json_file}: field 'dataset'")
        images = entry.get("images") if isinstance(entry, dict) else None
        if not isinstance(images, list) or len(images) != num_channels:
            raise _fail(json_file, f"dataset.{case_id}.images", f"must list {num_channels} image files",
                        "give one file per channel, in channel order")
        paths = []
        for image in images:
            p = Path(image)
            if not p.is_absolute():
                p = (folder / p)
                if root not in p.resolve().parents:
                    raise _fail(json_file, f"dataset.{case_id}.images", f"{image!r} points outside the dataset folder",
                                "use a path inside the dataset folder, or an absolute path")
            paths.append(p)
        cases[case_id] = paths
    return cases


def load_dataset_json(dataset_folder: str | Path) -> DatasetSpec:
    """Read and validate `dataset_folder/dataset.json` into a DatasetSpec (raises DatasetError)."""
    folder = Path(dataset_folder)
    json_file = folder / "dataset.json"
    if not json_file.is_file():
        raise DatasetError(f"{json_file}: not found. Fix: every dataset folder needs a dataset.json "
                           "(documentation/dataset_format.md shows one).")
    try:
        raw = json.loads(json_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e}). Fix: correct the syntax (a JSON validator "
                           "shows the exact spot).") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{json_file}: must contain a JSON object. Fix: see documentation/dataset_format.md.")
    channel_names = _parse_channel_names(raw, json_file)
    file_ending = raw.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise _fail(json_file, "file_ending", f"missing or invalid ({file_ending!r})", 'add e.g. "file_ending": ".nii.gz"')
    num_training = raw.get("numTraining")
    if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training < 1:
        raise _fail(json_file, "numTraining", f"missing or invalid ({num_training!r})",
                    "set it to the number of training cases in imagesTr")
    labels = raw.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise _fail(json_file, "labels", "must be an object", 'write e.g. {"background": 0, "tumour": 1}')
    return DatasetSpec(
        path=folder,
        name=str(raw.get("name", folder.name)),
        channel_names=channel_names,
        file_ending=file_ending,
        num_training=num_training,
        labels=labels,
        tasks=_parse_tasks(raw, channel_names, json_file),
        cases=_parse_explicit_cases(raw, folder, len(channel_names), json_file),
    )
