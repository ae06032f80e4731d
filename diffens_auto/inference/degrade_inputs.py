"""Prediction inputs made from fully sampled scans (`diffens_degrade`), so users can test a model on known truth.

For each case of the input folder, the channels the task conditions on are written to the output folder under the
same file names:
  - the target channel, when the task has an average-pooling degradation: degraded with it (`degrade_image`) and
    written, as float32, on its low-resolution grid (block centres: spacing × f, origin moved half a block,
    direction unchanged);
  - the task's other inputs (e.g. T1ce for a task "both"): copied byte for byte, geometry included.
A task without a degradation (modality translation) has nothing to degrade: its inputs are only copied.

A reconstruction task (a "kspace" degradation) gets, per case, a measurement bundle `CASE.npz` simulated from the
target's file and, beside it, the fully sampled reference `CASE_reference.nii.gz` (the target's file copied byte
for byte; `.nii` stays `.nii`) for evaluation:
  - the mask is `kspace_mask` of the degradation on the canonical grid, carried to the file's axes
    (`FileOrderKSpace.from_canonical_mask`); its seed is derived from `seed` and the case id (`case_seeds`), so a
    run is reproducible and every case has its own mask;
  - the k-space is A x = M F P x of the canonical image read as real-valued (single-coil, real objects, as the
    paper simulates), in the file's own array axes, 0 where not sampled;
  - noise (`noise_std` σ > 0): complex Gaussian on the sampled points only, σ per real and per imaginary part
    (E|n|² = 2σ²), in the units of the image intensities under the orthonormal FFT: F is unitary, so σ is also
    the noise a fully sampled image would carry per real and imaginary part of each voxel;
  - the bundle's affine is the file's NIfTI voxel-to-world (nibabel), checked to give the grid read_image reads.

Each case is read completely before anything of it is written, every write is atomic, and a case that fails
(an unreadable or 4D file, a missing channel; for a bundle also a scan that is not NIfTI, holds NaN/inf voxels or
reads differently in SimpleITK and nibabel) is reported in the summary while the others are written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel
import numpy as np
import torch

from diffens_auto.atomic import atomic_path
from diffens_auto.dataset.dataset_json import DatasetError, degradation_key
from diffens_auto.dataset.lookup import find_dataset_json
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.imageio import (ImageReadError, KSpaceBundle, bundle_geometry, check_same_geometry,
                                  count_nonfinite_voxels, read_image, write_image, write_kspace_bundle)
from diffens_auto.imageio.nibabel_io import is_nifti
from diffens_auto.inference.input_cases import find_input_cases
from diffens_auto.operators.degrade import degrade_image
from diffens_auto.operators.kspace_case import FileOrderKSpace, kspace_fft_axes, kspace_mask
from diffens_auto.preprocessing.normalization import kspace_case_seeds
from diffens_auto.workers import map_in_workers

WRITTEN, FAILED = "written", "failed"
REFERENCE_SUFFIX = "_reference"
# SimpleITK and nibabel derive a NIfTI's direction from float32 header fields along different paths
GEOMETRY_TOLERANCE = 1e-5


def checked_seed(seed) -> int:
    """The seed of the k-space masks and noise as an int, refused unless it is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r}: the seed of the k-space masks and noise must be an integer >= 0. "
                         "Fix: pass e.g. --seed 0.")
    return int(seed)


def case_seeds(seed: int, case_id: str) -> tuple[int, int]:
    """The (mask, noise) seeds of one case: reproducible across runs and machines, different for every case id."""
    # preprocessing's derivation: the default seed 0 is the seed training drew the case's mask with (the same mask
    # when preprocessing neither crops nor resamples the case, since a mask is drawn for its grid's shape)
    return kspace_case_seeds(case_id, checked_seed(seed))


def simulate_measurement(image: np.ndarray, reorientation: dict, degradation: dict, *, mask_seed: int = 0,
                         noise_seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """File-order k-space (complex64), bool mask and FFT axes of a real canonical image (noise: module docstring)."""
    canonical_mask = kspace_mask(degradation, image.shape, seed=mask_seed)
    operator = FileOrderKSpace.from_canonical_mask(reorientation, canonical_mask, kspace_fft_axes(degradation))
    kspace = operator.A(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))).numpy()
    mask = operator.mask.numpy()
    noise_std = float(degradation.get("noise_std", 0.0))
    if noise_std > 0:
        noise = np.random.default_rng(noise_seed).normal(0.0, noise_std, (2,) + kspace.shape)
        kspace = (kspace + (noise[0] + 1j * noise[1]) * mask).astype(np.complex64)
    return kspace, mask, operator.fft_axes


def _nifti_affine(path: Path, props: dict) -> np.ndarray:
    """The file's NIfTI voxel-to-world (RAS+) affine, refused unless it describes the grid read_image read."""
    if not is_nifti(path):
        raise ValueError(f"{path}: a measurement bundle records the scan's NIfTI affine, and this file is not NIfTI. "
                         "Fix: convert the scans to .nii.gz (e.g. SimpleITK.WriteImage) and set file_ending in "
                         "dataset.json to match.")
    try:
        image = nibabel.load(str(path))
        affine, shape = np.asarray(image.affine, float), image.shape[:3]
    except Exception as error:   # nibabel raises its own ImageFileError and several builtin errors
        raise ValueError(f"{path}: nibabel cannot read its affine ({type(error).__name__}: {error}). Fix: write "
                         "the file again as NIfTI, e.g. with SimpleITK.WriteImage.") from error
    geometry = bundle_geometry(affine, shape)
    problems = check_same_geometry(geometry, props, spacing_tol=GEOMETRY_TOLERANCE, origin_tol=GEOMETRY_TOLERANCE,
                                   direction_tol=GEOMETRY_TOLERANCE)
    if geometry["reorientation"] != props["reorientation"]:
        problems.append(f"reorientation {geometry['reorientation']} vs {props['reorientation']}")
    if problems:
        raise ValueError(f"{path}: nibabel's affine and SimpleITK's geometry describe different grids "
                         f"({'; '.join(problems)}), so the bundle would not lie on the reference's grid. Fix: write "
                         "the file again with one consistent qform and sform (e.g. read and write it with SimpleITK).")
    return affine


def _reference_name(case_id: str, target_file: Path) -> str:
    """CASE_reference with the target file's NIfTI ending (.nii.gz or .nii), since the reference is its copy."""
    ending = ".nii.gz" if target_file.name.lower().endswith(".nii.gz") else target_file.suffix
    return f"{case_id}{REFERENCE_SUFFIX}{ending}"


def _measured_bundle(target_file: Path, case_id: str, degradation: dict, seed: int) -> KSpaceBundle:
    """Read the target, check it and simulate its measurement bundle (nothing written)."""
    image, props = read_image(target_file)
    nonfinite = count_nonfinite_voxels(target_file, image)
    if nonfinite:
        raise ValueError(f"{target_file}: {nonfinite} voxels are NaN or infinite, so its k-space is undefined. "
                         "Fix: replace them (e.g. by 0) in the scan.")
    affine = _nifti_affine(target_file, props)
    mask_seed, noise_seed = case_seeds(seed, case_id)
    kspace, mask, fft_axes = simulate_measurement(image, props["reorientation"], degradation, mask_seed=mask_seed,
                                                  noise_seed=noise_seed)
    return KSpaceBundle(kspace=kspace, mask=mask, affine=affine, fft_axes=fft_axes,
                        noise_std=float(degradation.get("noise_std", 0.0)))


def degrade_kspace_case(case_id: str, target_file: str, output_folder: str, degradation: dict, seed: int) -> dict:
    """Write one case's bundle CASE.npz and reference (see the module docstring); returns its summary entry."""
    target_file, output_folder = Path(target_file), Path(output_folder)
    bundle_path = output_folder / f"{case_id}.npz"
    reference_path = output_folder / _reference_name(case_id, target_file)
    written = []
    try:
        bundle = _measured_bundle(target_file, case_id, degradation, seed)
        with atomic_path(reference_path) as tmp:
            shutil.copy2(target_file, tmp)
        written.append(reference_path)
        write_kspace_bundle(bundle, bundle_path)
        written.append(bundle_path)
    except (ImageReadError, ValueError, OSError) as e:
        # a case is whole or absent: a reference without its bundle would look like a finished case
        for path in written:
            path.unlink(missing_ok=True)
        return {"case": case_id, "status": FAILED, "files": [], "message": str(e)}
    return {"case": case_id, "status": WRITTEN, "files": [bundle_path.name, reference_path.name], "message": ""}


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


def _note(spec, task_spec, degradation: dict | None, seed: int) -> str:
    """One line saying what the command wrote, for every kind of degradation."""
    target = spec.channel_names[task_spec.target]
    if degradation is None:
        names = ", ".join(spec.channel_names[c] for c in task_spec.condition_channels)
        return f"no degradation, so its inputs ({names}) are only copied, unchanged"
    if degradation["type"] == "kspace":
        noise_std = float(degradation.get("noise_std", 0.0))
        noise = (f"complex Gaussian noise of std {noise_std:g} per real and imaginary part on the sampled points"
                 if noise_std > 0 else "no noise")
        return (f"{target} undersampled in k-space ({degradation_key(degradation)}, seed {seed}, {noise}): "
                f"CASE.npz measurement bundles, with the fully sampled CASE{REFERENCE_SUFFIX} scans beside them")
    if "factor" in degradation:
        return (f"{target} degraded ({degradation['type']}, factor {list(degradation['factor'])}); other inputs "
                "copied")
    return f"{target} degraded ({degradation['type']}); other inputs copied"


def degrade_folder(input_folder, output_folder, dataset, task: str, *, num_processes: int = 1,
                   verbose: bool = True, seed: int = 0) -> dict:
    """Write `task`'s prediction inputs for every case of `input_folder` into `output_folder`; returns a summary.

    Summary: {"dataset", "task", "degradation" (dict or None), "note", "seed" (of the k-space masks and noise; other
    tasks draw nothing), "input_folder", "output_folder", "num_written", "num_failed",
    "cases": [{"case", "status" ("written" | "failed"), "files", "message"}]}.
    Raises DatasetError for an unknown task or an unusable input folder; a bad case only fails that case.
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if input_folder.resolve() == output_folder.resolve():
        raise ValueError(f"-o {output_folder} is the input folder: the degraded target would replace its "
                         "high-resolution scan. Fix: give another output folder.")
    seed = checked_seed(seed)
    spec = find_dataset_json(dataset)
    if task not in spec.tasks:
        raise DatasetError(f"{spec.json_file}: no task '{task}' (tasks: {sorted(spec.tasks)}). Fix: pass one of "
                           "them with -t.")
    task_spec = spec.tasks[task]
    degradation = task_spec.degradation.to_dict() if task_spec.degradation is not None else None
    kspace = degradation is not None and degradation["type"] == "kspace"
    # a reconstruction task conditions on nothing, but its bundles are simulated from the target's scan
    channels = (task_spec.target,) if kspace else task_spec.condition_channels
    cases = find_input_cases(input_folder, spec, channels)
    output_folder.mkdir(parents=True, exist_ok=True)
    jobs, entries = [], {}
    for case in cases:
        if case.problem is not None:
            entries[case.case_id] = {"case": case.case_id, "status": FAILED, "files": [], "message": case.problem}
        elif kspace:
            jobs.append((case.case_id, str(case.files[task_spec.target]), str(output_folder), degradation, seed))
        else:
            files = {c: str(case.files[c]) for c in channels}
            jobs.append((case.case_id, files, str(output_folder), task_spec.target, degradation))
    worker = degrade_kspace_case if kspace else degrade_case
    for entry in map_in_workers(worker, jobs, num_processes, "degrade", verbose):
        entries[entry["case"]] = entry
    summary = [entries[k] for k in sorted(entries)]
    return {"dataset": resolve_dataset_name(dataset), "task": task, "degradation": degradation,
            "note": _note(spec, task_spec, degradation, seed), "seed": seed,
            "input_folder": str(input_folder), "output_folder": str(output_folder),
            "num_written": sum(e["status"] == WRITTEN for e in summary),
            "num_failed": sum(e["status"] == FAILED for e in summary), "cases": summary}
