"""Which files are evaluated together: each case's reference, prediction, uncertainty map and mask.

Predictions are `CASE<ending>`; uncertainty maps `CASE_std<ending>` (never a prediction); masks `CASE<ending>`.
A reference is `CASE<ending>`, or nnU-Net's `CASE_XXXX<ending>` when it is the case's only channel file or
`ref_channel` names its channel, or `CASE_reference<ending>`, the fully sampled scan `diffens_degrade -t recon`
writes beside each bundle (so its output folder can be the reference folder as it is).
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from diffens_auto.errors import MissingFileError

# Two-part endings first, so "a.nii.gz" ends in ".nii.gz" and not ".gz".
IMAGE_ENDINGS = (".nii.gz", ".gipl.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".tif", ".tiff", ".vtk",
                 ".mnc")
DEFAULT_ENDING = ".nii.gz"
STD_SUFFIX = "_std"
# inference.degrade_inputs.REFERENCE_SUFFIX, spelled out here: evaluation imports nothing that loads torch
REFERENCE_SUFFIX = "_reference"
_CHANNEL_FILE = re.compile(r"^(.+)_(\d{4})$")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case; `problem` says why it cannot be evaluated (None if it can)."""
    case: str
    reference: Path | None
    prediction: Path | None = None
    std: Path | None = None
    mask: Path | None = None
    problem: str | None = None


def image_ending(name: str) -> str | None:
    """The image file ending of a file name (".nii.gz", ".mha", ...), None for other files."""
    lower = name.lower()
    return next((ending for ending in IMAGE_ENDINGS if lower.endswith(ending)), None)


def detect_file_ending(reference_folder: str | Path) -> str:
    """The most common image ending among the reference files (".nii.gz" wins ties)."""
    folder = existing_folder(reference_folder, "reference")
    counts = Counter(image_ending(f.name) for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    counts.pop(None, None)
    if not counts:
        raise MissingFileError(f"{folder}: no reference images (files ending in {', '.join(IMAGE_ENDINGS)}). Fix: "
                                "pass the folder holding the reference volumes with -ref.")
    return min(counts, key=lambda ending: (-counts[ending], ending != DEFAULT_ENDING, ending))


def existing_folder(folder: str | Path, role: str) -> Path:
    """`folder` as a Path; FileNotFoundError naming its role if it is not a directory."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{role} folder {folder} not found. Fix: check the path.")
    return folder


def image_files(folder: Path, file_ending: str) -> dict[str, Path]:
    """{name without ending: path} of the images in `folder` with `file_ending`, leaving out `*_std` maps."""
    files = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name.endswith(file_ending):
            stem = f.name[: -len(file_ending)]
            if not stem.endswith(STD_SUFFIX):
                files[stem] = f
    return files


def _reference_files(references: dict[str, Path], predictions: dict[str, Path],
                     ref_channel: int | None) -> dict[str, list[Path]]:
    """{case: its candidate reference files}: exact names first, then `CASE_XXXX` files grouped by CASE and
    `CASE_reference` files."""
    if ref_channel is not None:
        return {m.group(1): [f] for stem, f in references.items()
                if (m := _CHANNEL_FILE.match(stem)) and int(m.group(2)) == ref_channel}
    cases, channel_files, ignored = {}, {}, []
    for stem, f in references.items():
        match = _CHANNEL_FILE.match(stem)
        if stem in predictions:
            cases[stem] = [f]
        elif stem.endswith(REFERENCE_SUFFIX) and len(stem) > len(REFERENCE_SUFFIX):
            channel_files.setdefault(stem[: -len(REFERENCE_SUFFIX)], []).append(f)
        elif match is None:
            cases[stem] = [f]
        else:
            channel_files.setdefault(match.group(1), []).append(f)
    for case, files in channel_files.items():
        if case in cases:  # CASE<ending> is the reference; CASE_XXXX beside it is another image of the case
            ignored += files
        else:
            cases[case] = files
    if ignored:
        warnings.warn(f"Reference files ignored (the case has a reference named CASE<ending>): "
                      f"{', '.join(f.name for f in ignored)}")
    return dict(sorted(cases.items()))


def _problem(case: str, references: list[Path], prediction: Path | None, mask: Path | None, *,
             prediction_folder: Path, mask_folder: Path | None, file_ending: str) -> str | None:
    """Why a case cannot be evaluated, with the fix; None if its files are all there."""
    if len(references) > 1:
        return (f"{len(references)} reference files for case {case} ({', '.join(f.name for f in references)}). Fix: "
                "pass -ref_channel N (API: ref_channel=N) to name the channel that holds the reference.")
    if prediction is None:
        return (f"no prediction {prediction_folder / (case + file_ending)} for reference {references[0]}. Fix: "
                "predict this case, or remove its reference from the reference folder.")
    if mask_folder is not None and mask is None:
        return (f"no mask {mask_folder / (case + file_ending)} for reference {references[0]}. Fix: add the case's "
                "label map, or evaluate without -mask.")
    return None


def pair_case_files(reference_folder: str | Path, prediction_folder: str | Path, file_ending: str, *,
                    ref_channel: int | None = None, mask_folder: str | Path | None = None,
                    std_folder: str | Path | None = None) -> tuple[list[CaseFiles], list[Path]]:
    """Each reference case's files (sorted by case) and the predictions no reference asks for."""
    reference_folder = existing_folder(reference_folder, "reference")
    prediction_folder = existing_folder(prediction_folder, "prediction")
    mask_folder = None if mask_folder is None else existing_folder(mask_folder, "mask")
    std_folder = prediction_folder if std_folder is None else existing_folder(std_folder, "uncertainty (-std)")
    predictions = image_files(prediction_folder, file_ending)
    cases = _reference_files(image_files(reference_folder, file_ending), predictions, ref_channel)
    if not cases:
        wanted = f"CASE_{ref_channel:04d}{file_ending}" if ref_channel is not None else f"CASE{file_ending}"
        raise MissingFileError(f"{reference_folder}: no reference images named {wanted}. Fix: check -ref, "
                                "-file_ending and -ref_channel.")
    masks = {} if mask_folder is None else image_files(mask_folder, file_ending)
    paired = []
    for case, references in cases.items():
        prediction, mask = predictions.get(case), masks.get(case)
        std = std_folder / f"{case}{STD_SUFFIX}{file_ending}"
        problem = _problem(case, references, prediction, mask, prediction_folder=prediction_folder,
                           mask_folder=mask_folder, file_ending=file_ending)
        paired.append(CaseFiles(case, references[0], prediction, std if std.is_file() else None, mask, problem))
    extra = [f for stem, f in predictions.items() if stem not in cases]
    return paired, extra
