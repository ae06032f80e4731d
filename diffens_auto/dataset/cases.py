"""Case discovery: nnU-Net's `CASE_XXXX<file_ending>` naming, one file per channel."""
from __future__ import annotations

import os
import re
from pathlib import Path

from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec, check_case_identifier

CHANNEL_SUFFIX_DIGITS = 4


def channel_file(folder: Path, case_id: str, channel: int, file_ending: str) -> Path:
    """Return the path of one channel of a case in nnU-Net naming."""
    return Path(folder) / f"{case_id}_{channel:0{CHANNEL_SUFFIX_DIGITS}d}{file_ending}"


def discover_cases(folder: str | Path, file_ending: str, num_channels: int,
                   required_channels: tuple[int, ...] | None = None) -> dict[str, list[Path | None]]:
    """Group the image files of `folder` by case; raise DatasetError listing every case missing a required channel.

    Channels outside `required_channels` may be absent (their entry is None), so a prediction task needs
    only its own inputs.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found. Fix: put the images there, named CASE_XXXX{file_ending}.")
    pattern = re.compile(rf"^(.+)_(\d{{{CHANNEL_SUFFIX_DIGITS}}}){re.escape(file_ending)}$")
    found: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.name.endswith(file_ending):
            continue
        match = pattern.match(f.name)
        if match is None:
            raise DatasetError(f"{f}: file name does not follow CASE_XXXX{file_ending} (4-digit channel number). "
                               f"Fix: rename it, e.g. {f.name[: -len(file_ending)]}_0000{file_ending}.")
        case_id, channel = match.group(1), int(match.group(2))
        check_case_identifier(case_id, str(f))
        if channel >= num_channels:
            raise DatasetError(f"{f}: channel {channel} does not exist (dataset.json has {num_channels} "
                               f"channel(s)). Fix: rename the file or add the channel to channel_names.")
        found.setdefault(case_id, {})[channel] = f
    required = tuple(range(num_channels)) if required_channels is None else required_channels
    problems = [
        f"case {case_id}: channel {c} missing, expected {channel_file(folder, case_id, c, file_ending)}"
        for case_id, files in found.items() for c in required if c not in files
    ]
    if problems:
        raise DatasetError(f"{folder}: {len(problems)} missing channel file(s):\n  " + "\n  ".join(problems)
                           + "\nFix: add the missing files or remove the incomplete cases.")
    return {case_id: [files.get(c) for c in range(num_channels)] for case_id, files in found.items()}


def find_training_cases(spec: DatasetSpec) -> dict[str, list[Path]]:
    """Return every training case's channel files, from dataset.json's `dataset` entry or from imagesTr/."""
    if spec.cases is not None:
        return dict(spec.cases)
    cases = discover_cases(spec.path / "imagesTr", spec.file_ending, spec.num_channels)
    if not cases:
        raise DatasetError(f"{spec.path / 'imagesTr'}: no images ending in {spec.file_ending}. Fix: put the "
                           "training images there or correct 'file_ending' in dataset.json.")
    return cases


def file_stamps(files: list[Path]) -> list[list[int]]:
    """Return [size, modification time in ns] of each file, to notice raw data that changed since it was used."""
    return [[os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
