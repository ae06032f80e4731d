"""dataset.json: nnU-Net's fields plus `tasks`, validated into a DatasetSpec with errors that name the fix."""
from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from diffens_auto.errors import DiffensError

SUPPORTED_DEGRADATIONS = ("avgpool", "kspace")
DEFAULT_SR_FACTOR = (4, 4, 4)
KSPACE_MASKS = ("poisson", "uniform1d")
KSPACE_DEFAULTS = {"acs": 12, "slice_axis": 2, "noise_std": 0.0, "mask_per_slice": False}
_KSPACE_FIELDS = ("type", "mask", "acceleration", *KSPACE_DEFAULTS)
# keys that ask for coil sensitivities or complex-valued objects, which the priors cannot represent
_OUT_OF_SCOPE_KEY_PARTS = ("coil", "complex", "sensitiv")
_KSPACE_SCOPE = ("k-space tasks are single-coil with real-valued objects: multi-coil and complex priors are out "
                 "of scope")
_AXIS_LETTERS = "xyz"
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
class KSpaceDegradationSpec:
    """Single-coil Cartesian undersampling of every slice along `slice_axis` (canonical X, Y, Z order)."""

    mask: str
    acceleration: float
    acs: int = KSPACE_DEFAULTS["acs"]
    slice_axis: int = KSPACE_DEFAULTS["slice_axis"]
    noise_std: float = KSPACE_DEFAULTS["noise_std"]
    mask_per_slice: bool = KSPACE_DEFAULTS["mask_per_slice"]

    @property
    def type(self) -> str:
        """The degradation type, "kspace"."""
        return "kspace"

    def to_dict(self) -> dict:
        """Return the JSON form used in plans, every default written out."""
        return {"type": self.type, "mask": self.mask, "acceleration": self.acceleration, "acs": self.acs,
                "slice_axis": self.slice_axis, "noise_std": self.noise_std, "mask_per_slice": self.mask_per_slice}


@dataclass(frozen=True)
class TaskSpec:
    """One translation task: which channel is produced from which channels and/or its own degraded version."""

    name: str
    target: int
    inputs: tuple[int, ...]
    degradation: DegradationSpec | KSpaceDegradationSpec | None

    @property
    def condition_channels(self) -> tuple[int, ...]:
        """Channels the condition is made of: the inputs, plus the target itself when it is average-pooled."""
        # a k-space task's experts are unconditional priors: its measurement is not a condition channel
        pooled = self.degradation is not None and self.degradation.type == "avgpool"
        return self.inputs + ((self.target,) if pooled else ())

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
    """Name a degradation (a spec or its dict): "avgpool_4x4x4", "kspace_poisson_8x_acs12_z" (documented keys)."""
    if not isinstance(degradation, Mapping):
        degradation = degradation.to_dict()
    if degradation["type"] == "kspace":
        return _kspace_key({**KSPACE_DEFAULTS, **degradation})
    return f"{degradation['type']}_{'x'.join(str(int(f)) for f in degradation['factor'])}"


def _number_text(value) -> str:
    """Shortest exact text of a number: 8.0 -> "8", 0.01 -> "0.01" (so different values never share a key)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _kspace_key(degradation: Mapping) -> str:
    key = (f"kspace_{degradation['mask']}_{_number_text(degradation['acceleration'])}x_acs{int(degradation['acs'])}"
           f"_{_AXIS_LETTERS[int(degradation['slice_axis'])]}")
    if float(degradation["noise_std"]) != 0:
        key += f"_noise{_number_text(degradation['noise_std'])}"
    return key + ("_perslice" if degradation["mask_per_slice"] else "")


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


def _parse_degradation(raw, json_file: Path, field_name: str) -> DegradationSpec | KSpaceDegradationSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "type" not in raw:
        raise _fail(json_file, field_name, "must be an object with a 'type'",
                    'write e.g. {"type": "avgpool", "factor": [4, 4, 4]}')
    if raw["type"] not in SUPPORTED_DEGRADATIONS:
        raise _fail(json_file, f"{field_name}.type", f"unknown degradation {raw['type']!r}",
                    f"use one of {list(SUPPORTED_DEGRADATIONS)}")
    if raw["type"] == "kspace":
        return _parse_kspace(raw, json_file, field_name)
    factor = raw.get("factor", list(DEFAULT_SR_FACTOR))
    if isinstance(factor, int) and not isinstance(factor, bool):
        factor = [factor] * 3
    if (not isinstance(factor, list) or len(factor) != 3
            or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in factor)):
        raise _fail(json_file, f"{field_name}.factor", f"must be three positive integers, got {factor!r}",
                    "give the factor per canonical axis (X, Y, Z), e.g. [4, 4, 4] or [1, 1, 4]")
    return DegradationSpec(type=raw["type"], factor=tuple(factor))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        # an integer too large for a float
        return False


# per field of a kspace degradation: (valid?, what it must be, the fix)
_KSPACE_CHECKS = {
    "acceleration": (lambda v: _is_finite_number(v) and v > 1,
                     "must be a finite number > 1 (all k-space points over the sampled ones)",
                     'write e.g. "acceleration": 8'),
    "acs": (lambda v: _is_int(v) and v >= 0,
            "must be a non-negative integer (the fully sampled centre: lines for uniform1d, a square for poisson)",
            'write e.g. "acs": 12, or 0 for no autocalibration region'),
    "slice_axis": (lambda v: _is_int(v) and v in (0, 1, 2),
                   "must be 0, 1 or 2 (the axis in canonical X, Y, Z order whose slices are undersampled)",
                   'write 2 to undersample every axial slice (constant Z), 1 coronal slices, 0 sagittal slices'),
    "noise_std": (lambda v: _is_finite_number(v) and v >= 0, "must be a finite number >= 0",
                  'write e.g. "noise_std": 0.0 (noiseless measurements)'),
    "mask_per_slice": (lambda v: isinstance(v, bool), "must be true or false",
                       'write false (one mask for every slice) or true (its own mask for each slice)'),
}


def _check_kspace_keys(raw: dict, json_file: Path, field_name: str) -> None:
    unknown = [key for key in raw if key not in _KSPACE_FIELDS]
    out_of_scope = [key for key in unknown if any(part in str(key).lower() for part in _OUT_OF_SCOPE_KEY_PARTS)]
    if out_of_scope:
        raise _fail(json_file, f"{field_name}.{out_of_scope[0]}", _KSPACE_SCOPE,
                    f"remove {out_of_scope} and give the target as single-coil, real-valued images")
    if unknown:
        raise _fail(json_file, f"{field_name}.{unknown[0]}",
                    f"unknown key (a kspace degradation has only {list(_KSPACE_FIELDS)})",
                    f"remove {unknown} or correct the spelling")
    missing = [key for key in ("mask", "acceleration") if key not in raw]
    if missing:
        raise _fail(json_file, f"{field_name}.{missing[0]}", "missing (a kspace degradation needs 'mask' and "
                    "'acceleration')", 'add e.g. "mask": "poisson", "acceleration": 8')


def _parse_kspace(raw: dict, json_file: Path, field_name: str) -> KSpaceDegradationSpec:
    _check_kspace_keys(raw, json_file, field_name)
    if raw["mask"] not in KSPACE_MASKS:
        raise _fail(json_file, f"{field_name}.mask", f"unknown mask {raw['mask']!r}: only the Cartesian masks "
                    f"{list(KSPACE_MASKS)} are supported ({_KSPACE_SCOPE})",
                    'write "mask": "poisson" (2D Poisson disc in every slice) or "uniform1d" (lines along one '
                    'in-plane axis)')
    values = {**KSPACE_DEFAULTS, **raw}
    for key, (valid, problem, fix) in _KSPACE_CHECKS.items():
        if not valid(values[key]):
            raise _fail(json_file, f"{field_name}.{key}", f"{problem}, got {values[key]!r}", fix)
    return KSpaceDegradationSpec(mask=values["mask"], acceleration=float(values["acceleration"]), acs=values["acs"],
                                 slice_axis=values["slice_axis"], noise_std=float(values["noise_std"]),
                                 mask_per_slice=values["mask_per_slice"])


def _check_conditions(json_file: Path, where: str, inputs: tuple[int, ...], degradation) -> None:
    if not inputs and degradation is None:
        raise _fail(json_file, where, "has neither inputs nor a degradation, so there is nothing to condition on",
                    "add 'inputs' (other channels) and/or a 'degradation' of the target")
    if isinstance(degradation, KSpaceDegradationSpec) and inputs:
        raise _fail(json_file, f"{where}.inputs", "a task with a kspace degradation reconstructs the target from "
                    "its measurement alone (its experts are unconditional priors), so it takes no inputs",
                    'write "inputs": [] (translate the other channels in a task of their own)')


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
        _check_conditions(json_file, where, inputs, degradation)
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
        raise _fail(json_file, "file_ending", f"missing or invalid ({file_ending!r})",
                    'add e.g. "file_ending": ".nii.gz"')
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
