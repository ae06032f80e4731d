"""The cases of a prediction (or degradation) input folder: which files make each case, and what is wrong with one.

Naming as nnU-Net: `CASE_XXXX<file_ending>`, XXXX the channel number of dataset.json; only the channels a task
needs must be there, files of other channels are ignored (a case with none of the needed ones is reported as
missing them). For a task that needs one channel, any image file `NAME<file_ending>` is a case of its own
(`NAME`), unless one file of the folder carries a dataset channel's number: then the folder is nnU-Net-named
and a file that does not fit is reported under its file name.

A problem with one case (a missing channel, a file name that fits no case) is recorded on that case, never raised:
a batch reports it and goes on with the others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from diffens_auto.dataset.cases import CHANNEL_SUFFIX_DIGITS, channel_file
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec


@dataclass
class InputCase:
    """One case of an input folder: its files by channel, or the problem that stops it from being predicted."""

    case_id: str
    files: dict[int, Path] = field(default_factory=dict)
    problem: str | None = None

    def files_for(self, channels: Sequence[int]) -> list[Path]:
        """The case's files of `channels`, in that order."""
        return [self.files[c] for c in channels]


def _image_files(folder: Path, file_ending: str) -> list[Path]:
    """Image files of `folder` with the dataset's ending; hidden files (atomic writes in progress) excluded."""
    return [f for f in sorted(folder.iterdir())
            if f.is_file() and not f.name.startswith(".") and f.name.endswith(file_ending)]


def find_input_cases(folder: str | Path, spec: DatasetSpec, channels: Sequence[int]) -> list[InputCase]:
    """Group `folder`'s image files into cases for a task that needs `channels`, sorted by case id.

    Raises DatasetError only when the folder itself is unusable (missing, or no image file at all).
    """
    folder = Path(folder)
    ending = spec.file_ending
    if not folder.is_dir():
        raise DatasetError(f"{folder}: input folder not found. Fix: give an existing folder of images named "
                           f"CASE_XXXX{ending}.")
    files = _image_files(folder, ending)
    if not files:
        raise DatasetError(f"{folder}: no image files ending in {ending} (the file_ending of {spec.json_file}). "
                           f"Fix: put the inputs there, named CASE_XXXX{ending}.")
    pattern = re.compile(rf"^(.+)_(\d{{{CHANNEL_SUFFIX_DIGITS}}}){re.escape(ending)}$")
    known = set(spec.channel_names)
    parsed = [(f, pattern.match(f.name)) for f in files]
    channels = [int(c) for c in channels]
    # a folder is nnU-Net-named as soon as one file carries the number of one of the dataset's channels
    nnunet_named = any(m is not None and int(m.group(2)) in known for _, m in parsed)
    if len(channels) == 1 and not nnunet_named:
        return [InputCase(f.name[: -len(ending)], {channels[0]: f}) for f in files]

    cases: dict[str, InputCase] = {}
    strays: list[InputCase] = []
    for f, match in parsed:
        if match is None or int(match.group(2)) not in known:
            # named by the file, so that a stray 'a.nii.gz' never marks the real case 'a' (a_0003) as failed
            strays.append(InputCase(f.name, problem=(
                f"{f.name} does not follow CASE_XXXX{ending} with XXXX one of the dataset's channels "
                f"{sorted(known)}. Fix: rename it (e.g. {f.name[: -len(ending)]}_{channels[0]:04d}{ending}) or "
                "move it out of the folder.")))
            continue
        case = cases.setdefault(match.group(1), InputCase(match.group(1)))
        if int(match.group(2)) in channels:
            case.files[int(match.group(2))] = f
    for case in cases.values():
        missing = [c for c in channels if c not in case.files]
        if missing:
            names = ", ".join(f"channel {c} ({spec.channel_names.get(c, '?')}): "
                              f"{channel_file(folder, case.case_id, c, ending).name}" for c in missing)
            case.problem = f"missing input file(s) {names}. Fix: add them to {folder}."
    cases.update({stray.case_id: stray for stray in strays})
    return [cases[k] for k in sorted(cases)]


def split_into_parts(cases: Sequence, num_parts: int, part_id: int) -> list:
    """Part `part_id` of `num_parts` of the sorted cases (every num_parts-th one), as nnU-Net's -num_parts."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"-num_parts {num_parts} -part_id {part_id}: part_id must be in 0..num_parts-1.")
    return list(cases)[part_id::num_parts]
