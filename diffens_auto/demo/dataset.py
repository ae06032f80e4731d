"""The synthetic demo datasets: `DatasetXXX_DemoBrain` (kind "brain", the default) and `DatasetXXX_DemoEllipses`.

DemoBrain holds multi-contrast brain phantoms, each sampled on its own grid.

Defaults (small enough that the tiny pipeline trains on a CPU): 10 cases, a field of view of 48 x 48 x 48 voxels
of 1.5 mm (72 mm; the head, a miniature brain about 50-58 mm front to back, keeps >= 2 voxels + 1 mm of background
on every side), Rician noise of 2% of the white-matter-scale signal. Cases cycle through orientations so that even
the first three cases hold an axis-aligned, an oblique and an anisotropic one:

    orientation  = ("RAS", "LPS", "PIR", "ASL")[i % 4]        letters name where each array axis points
    oblique      = i % 3 == 1   (rotated 5-25 degrees about a random axis)
    anisotropic  = i % 5 == 2   (spacing 0.8, 0.8, 1.6 x nominal: e.g. 1.2 x 1.2 x 2.4 mm, thick slices on axis 2)

Every case has a random head centre (non-zero origins), head size, deformation, folding, tumour, bias field and
channel gains, all drawn from a generator seeded by (seed, case index), so case i does not depend on num_cases.

DemoEllipses (kind "ellipses") holds random 3D ellipsoid phantoms (`demo/ellipsoids.py`), the paper's ELLIPSES
prior in 3D: one channel "T1", every case on the same axis-aligned RAS grid of `shape` x `spacing` centred on the
world origin, no labels, and the single task `sr`. Case i is drawn from (seed, i) too.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from diffens_auto import paths
from diffens_auto.atomic import atomic_write_json
from diffens_auto.demo.ellipsoids import (EllipsoidPhantom, ellipsoid_grid, render_ellipsoid_phantom,
                                          sample_ellipsoid_phantom)
from diffens_auto.demo.phantom import (CHANNELS, TISSUES, FourierField, Grid, PhantomCase, render_case,
                                       wavelength_to_frequency)
from diffens_auto.imageio import write_image

DATASET_NAME = "DemoBrain"
FILE_ENDING = ".nii.gz"
DEFAULT_NUM_CASES = 10
DEFAULT_SHAPE = (48, 48, 48)
DEFAULT_SR_FACTOR = 4         # the paper's 4x isotropic setting
DEFAULT_SPACING = (1.5, 1.5, 1.5)
DEFAULT_NOISE = 0.02

KINDS = ("brain", "ellipses")
ELLIPSES_DATASET_NAME = "DemoEllipses"
ELLIPSES_CHANNELS = ("T1",)
_DATASET_NAMES = {"brain": DATASET_NAME, "ellipses": ELLIPSES_DATASET_NAME}

ORIENTATION_CYCLE = ("RAS", "LPS", "PIR", "ASL")
ANISOTROPIC_SPACING_FACTORS = (0.8, 0.8, 1.6)
OBLIQUE_DEGREES = (5.0, 25.0)
HEAD_AXIS_RATIOS = np.array([0.82, 1.0, 0.78])  # left-right, anterior-posterior, inferior-superior
DEFORMATION_PER_MM_HEAD = 0.07  # displacement bound as a fraction of the head's largest semi-axis
MIN_HEAD_SEMI_AXIS_MM = 6.0

# World (LPS) unit vector that an array axis points toward, per orientation letter.
_LETTER_VECTORS = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}


def dataset_folder_name(dataset_id: int) -> str:
    """The folder name of the demo dataset with this id, e.g. `Dataset900_DemoBrain`."""
    return f"Dataset{dataset_id:03d}_{DATASET_NAME}"


def case_identifier(index: int) -> str:
    """The case id of the index-th demo case, e.g. `DemoBrain_000`."""
    return f"{DATASET_NAME}_{index:03d}"


def direction_from_orientation(code: str) -> np.ndarray:
    """Direction matrix (columns = LPS unit vectors of the array axes) of a code such as "RAS" or "PIR".

    Each letter says where its axis points (nibabel's convention): "RAS" = axis 0 toward the patient's right.
    """
    code = code.upper()
    if len(code) != 3 or sorted(_axis_of(letter) for letter in code) != [0, 1, 2]:
        raise ValueError(f"Orientation code '{code}' must name each of L/R, P/A, S/I exactly once, e.g. 'RAS'.")
    return np.array([_LETTER_VECTORS[letter] for letter in code]).T


def _axis_of(letter: str) -> int:
    if letter not in _LETTER_VECTORS:
        raise ValueError(f"Unknown orientation letter '{letter}'; use L, R, P, A, S or I.")
    return int(np.argmax(np.abs(_LETTER_VECTORS[letter])))


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about a unit `axis` by `angle` radians (Rodrigues' formula)."""
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def sample_demo_case(
    index: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    noise: float = DEFAULT_NOISE,
) -> PhantomCase:
    """Draw the index-th demo case: its grid (orientation kind fixed by `index`) and its random anatomy.

    `shape` and `spacing` are the nominal field of view in world (X = left-right, Y = posterior-anterior,
    Z = inferior-superior) order; each case covers the same extent with its own spacing and orientation.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    grid, head_centre = _sample_grid(rng, index, np.asarray(shape, float) * np.asarray(spacing, float), spacing)
    semi_axes = _fit_head(rng, grid, head_centre)
    scale = float(semi_axes.max())
    tumour_radius = float(rng.uniform(0.26, 0.36) * scale)
    return PhantomCase(
        case_id=case_identifier(index),
        grid=grid,
        head_centre=head_centre,
        head_semi_axes=semi_axes,
        deformation=FourierField.random(
            rng, 4, wavelength_to_frequency((1.2 * scale, 3.5 * scale)), DEFORMATION_PER_MM_HEAD * scale, dims=3
        ),
        gyri=FourierField.random(rng, 8, (5.0, 10.0), 0.09),
        sulci=FourierField.random(rng, 8, (5.0, 10.0), 0.10),
        tumour_centre=head_centre + _sample_tumour_offset(rng, semi_axes, tumour_radius),
        tumour_radius=tumour_radius,
        tumour_shape=FourierField.random(rng, 4, (1.5, 3.0), 0.15),
        texture=FourierField.random(rng, 10, wavelength_to_frequency((6.0, 16.0)), 0.08),
        bias=FourierField.random(rng, 3, wavelength_to_frequency((90.0, 250.0)), 0.2),
        channel_gains=np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=len(CHANNELS))),
        noise=float(noise),
        noise_seed=int(rng.integers(2**63 - 1)),
    )


def demo_cases(
    num_cases: int = DEFAULT_NUM_CASES,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    noise: float = DEFAULT_NOISE,
) -> list[PhantomCase]:
    """The cases `make_demo_dataset` writes with these arguments (render one on any grid with `render_case`)."""
    return [sample_demo_case(i, seed, shape, spacing, noise) for i in range(num_cases)]


def _sample_grid(rng: np.random.Generator, index: int, fov_mm: np.ndarray, spacing) -> tuple[Grid, np.ndarray]:
    """The case's own grid (orientation, obliquity, spacing, origin) and its head centre in world mm."""
    direction = direction_from_orientation(ORIENTATION_CYCLE[index % len(ORIENTATION_CYCLE)])
    if index % 3 == 1:
        axis = rng.normal(size=3)
        angle = np.deg2rad(rng.uniform(*OBLIQUE_DEGREES))
        direction = _rotation(axis / np.linalg.norm(axis), angle) @ direction
    nominal = np.full(3, float(np.mean(spacing)))
    if index % 5 == 2:
        case_spacing = nominal * np.asarray(ANISOTROPIC_SPACING_FACTORS)
    else:
        case_spacing = nominal * rng.uniform(0.95, 1.05)
    world_axis = np.argmax(np.abs(direction), axis=0)
    # Nominal spacing may differ per world axis: keep each axis' field of view, not its voxel count.
    case_spacing = case_spacing * np.asarray(spacing, float)[world_axis] / nominal
    case_shape = np.maximum(np.round(fov_mm[world_axis] / case_spacing), 1).astype(int)
    head_centre = rng.uniform(-20.0, 20.0, size=3)
    grid_centre = head_centre + rng.uniform(-1.0, 1.0, size=3) * min(2.0, 0.03 * float(fov_mm.min()))
    origin = grid_centre - direction @ (case_spacing * (case_shape - 1) / 2.0)
    grid = Grid(
        tuple(int(n) for n in case_shape),
        tuple(float(s) for s in case_spacing),
        tuple(float(o) for o in origin),
        tuple(tuple(float(v) for v in row) for row in direction),
    )
    return grid, head_centre


def _fit_head(rng: np.random.Generator, grid: Grid, head_centre: np.ndarray) -> np.ndarray:
    """Head semi-axes (mm) so the deformed head stays >= 2 voxels + 1 mm inside the grid along every grid axis."""
    direction = grid.direction_matrix
    spacing = np.asarray(grid.spacing)
    half_extent = spacing * (np.asarray(grid.shape) - 1) / 2.0
    offset = np.abs(direction.T @ (head_centre - grid.centre))
    margin = 2.0 * spacing + 1.0
    # Half-width of the ellipsoid sum((x_i / a_i)^2) <= 1 along unit vector d is sqrt(sum(a_i^2 d_i^2)).
    reach = np.sqrt(((HEAD_AXIS_RATIOS[:, None] * direction) ** 2).sum(axis=0))
    largest = float(np.min((half_extent - offset - margin) / (reach + DEFORMATION_PER_MM_HEAD)))
    if largest < MIN_HEAD_SEMI_AXIS_MM:
        raise ValueError(
            f"The demo field of view {grid.shape} voxels x {grid.spacing} mm is too small for a head with a "
            "background margin; use a larger shape or spacing (e.g. --shape 48 48 48 --spacing 1.5 1.5 1.5)."
        )
    return largest * rng.uniform(0.85, 1.0) * HEAD_AXIS_RATIOS


def _sample_tumour_offset(rng: np.random.Generator, semi_axes: np.ndarray, radius: float) -> np.ndarray:
    """Tumour centre relative to the head centre (mm), deep enough that its solid part stays inside the brain."""
    unit = rng.normal(size=3)
    unit /= np.linalg.norm(unit)
    # Solid part reaches 0.8 radii, lumps add up to 15%; the pial surface lies at >= 0.82 of the semi-axes.
    deepest = 0.8 - 0.8 * 1.15 * radius / float(semi_axes.min())
    depth = rng.uniform(min(0.2, deepest), deepest)
    return unit * depth * semi_axes


def demo_dataset_json(num_cases: int, description: str = "", sr_factor: int = DEFAULT_SR_FACTOR) -> dict:
    """The dataset.json of the demo dataset, with its three tasks (sr, mt, both); sr and both pool sr_factor^3."""
    degradation = {"type": "avgpool", "factor": [int(sr_factor)] * 3}
    return {
        "name": DATASET_NAME,
        "description": description or "Synthetic multi-contrast brain phantoms with a tumour (diffens_auto demo).",
        "channel_names": {str(c): name for c, name in enumerate(CHANNELS)},
        "labels": {name: value for value, name in enumerate(TISSUES)},
        "numTraining": int(num_cases),
        "file_ending": FILE_ENDING,
        "tasks": {
            "sr": {"target": "FLAIR", "inputs": [], "degradation": dict(degradation)},
            "mt": {"target": "FLAIR", "inputs": ["T1ce"]},
            "both": {"target": "FLAIR", "inputs": ["T1ce"], "degradation": dict(degradation)},
        },
    }


def sample_ellipsoid_case(
    index: int,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    noise: float = DEFAULT_NOISE,
) -> EllipsoidPhantom:
    """Draw the index-th ellipsoid case (`DemoEllipses_XXX`) on the RAS grid of `shape` voxels x `spacing` mm."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    case_id = f"{ELLIPSES_DATASET_NAME}_{index:03d}"
    return sample_ellipsoid_phantom(case_id, rng, ellipsoid_grid(shape, spacing), noise)


def ellipsoid_cases(
    num_cases: int = DEFAULT_NUM_CASES,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    noise: float = DEFAULT_NOISE,
) -> list[EllipsoidPhantom]:
    """The cases `make_demo_dataset(kind="ellipses")` writes with these arguments."""
    return [sample_ellipsoid_case(i, seed, shape, spacing, noise) for i in range(num_cases)]


def ellipsoid_dataset_json(num_cases: int, description: str = "", sr_factor: int = DEFAULT_SR_FACTOR) -> dict:
    """The dataset.json of the ellipsoid dataset: one channel "T1", no labels, one task sr pooling sr_factor^3."""
    return {
        "name": ELLIPSES_DATASET_NAME,
        "description": description or "Random 3D ellipsoid phantoms, the ELLIPSES prior in 3D (diffens_auto demo).",
        "channel_names": {str(c): name for c, name in enumerate(ELLIPSES_CHANNELS)},
        "numTraining": int(num_cases),
        "file_ending": FILE_ENDING,
        "tasks": {
            "sr": {"target": ELLIPSES_CHANNELS[0], "inputs": [],
                   "degradation": {"type": "avgpool", "factor": [int(sr_factor)] * 3}},
        },
    }


def write_ellipsoid_case(phantom: EllipsoidPhantom, dataset_folder: str | os.PathLike) -> list[Path]:
    """Render `phantom` on its grid and write imagesTr/CASE_0000.nii.gz (float32); there are no labels."""
    path = Path(dataset_folder) / "imagesTr" / f"{phantom.case_id}_0000{FILE_ENDING}"
    _write_array(render_ellipsoid_phantom(phantom), phantom.grid, path)
    return [path]


def write_case(case: PhantomCase, dataset_folder: str | os.PathLike) -> list[Path]:
    """Render `case` on its grid and write imagesTr/CASE_000C.nii.gz (float32) and labelsTr/CASE.nii.gz (uint8)."""
    dataset_folder = Path(dataset_folder)
    images, labels = render_case(case)
    written = []
    for channel, image in enumerate(images):
        path = dataset_folder / "imagesTr" / f"{case.case_id}_{channel:04d}{FILE_ENDING}"
        _write_array(image, case.grid, path)
        written.append(path)
    label_path = dataset_folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}"
    _write_array(labels, case.grid, label_path)
    return written + [label_path]


def _write_array(array: np.ndarray, grid: Grid, path: Path) -> None:
    """Write an (i, j, k)-indexed array with the grid's geometry."""
    # The array is indexed like the file (no reorientation), so the file's axes are the grid's own axes.
    props = {"spacing": list(grid.spacing), "origin": list(grid.origin), "direction": grid.direction_matrix.tolist(),
             "reorientation": {"permutation": [0, 1, 2], "flips": [False, False, False]}}
    write_image(array, props, path)


def make_demo_dataset(
    output_folder: str | os.PathLike | None = None,
    dataset_id: int = 900,
    *,
    num_cases: int = DEFAULT_NUM_CASES,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    seed: int = 0,
    noise: float = DEFAULT_NOISE,
    sr_factor: int = DEFAULT_SR_FACTOR,
    kind: str = "brain",
) -> Path:
    """Write `Dataset{id:03d}_DemoBrain` (kind "ellipses": `_DemoEllipses`) into `output_folder`; return its path.

    `output_folder` defaults to the raw folder. Deterministic in its arguments (same seed, same bytes on one
    platform). Re-running overwrites the dataset's own files and removes demo cases beyond `num_cases`;
    dataset.json is written last, so a dataset with one is complete. The other kind's folder with the same id
    is refused, since `-d ID` would then name two datasets.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown demo dataset kind {kind!r}; use one of: {', '.join(KINDS)}.")
    _check_arguments(dataset_id, num_cases, shape, spacing, noise)
    if int(sr_factor) != sr_factor or not 1 < sr_factor < min(shape):
        raise ValueError(f"sr_factor must be an integer between 2 and the smallest size - 1, got {sr_factor}.")
    if output_folder is None:
        output_folder = paths.raw_folder()
    _check_id_is_free(Path(output_folder), dataset_id, kind)
    folder = Path(output_folder) / f"Dataset{dataset_id:03d}_{_DATASET_NAMES[kind]}"
    write_cases = _write_ellipsoid_cases if kind == "ellipses" else _write_brain_cases
    content = write_cases(folder, num_cases=num_cases, seed=seed, shape=tuple(shape), spacing=tuple(spacing),
                          noise=noise, sr_factor=sr_factor)
    atomic_write_json(content, folder / "dataset.json")
    return folder


def _write_brain_cases(folder: Path, *, num_cases, seed, shape, spacing, noise, sr_factor) -> dict:
    """Write the brain cases (removing stale ones) and return their dataset.json."""
    cases = demo_cases(num_cases, seed, shape, spacing, noise)
    about = "Labels are the phantom's tissues; every case has its own orientation, origin and spacing."
    description = _write_kind(folder, cases, write_case, DATASET_NAME,
                              f"Synthetic multi-contrast brain phantoms with a tumour (diffens_auto demo): "
                              f"{_settings_text(seed, shape, spacing, noise)} {about}")
    return demo_dataset_json(num_cases, description, sr_factor)


def _write_ellipsoid_cases(folder: Path, *, num_cases, seed, shape, spacing, noise, sr_factor) -> dict:
    """Write the ellipsoid cases (removing stale ones) and return their dataset.json."""
    phantoms = ellipsoid_cases(num_cases, seed, shape, spacing, noise)
    about = "Every case lies on the same axis-aligned grid and is exactly 0 outside a centred ball."
    description = _write_kind(folder, phantoms, write_ellipsoid_case, ELLIPSES_DATASET_NAME,
                              f"Random 3D ellipsoid phantoms, the ELLIPSES prior in 3D (diffens_auto demo): "
                              f"{_settings_text(seed, shape, spacing, noise)} {about}")
    return ellipsoid_dataset_json(num_cases, description, sr_factor)


def _settings_text(seed, shape, spacing, noise) -> str:
    return f"seed {seed}, field of view {list(shape)} voxels x {list(spacing)} mm, noise {noise}."


def _write_kind(folder: Path, cases, write, name: str, description: str) -> str:
    """Write each case with `write`, remove the kind's stale cases; returns the description unchanged."""
    for case in cases:
        write(case, folder)
    _remove_stale_cases(folder, {case.case_id for case in cases}, name)
    return description


def _check_id_is_free(output_folder: Path, dataset_id: int, kind: str) -> None:
    """Refuse to write a demo dataset beside the other demo kind's folder with the same id."""
    for other in KINDS:
        clash = output_folder / f"Dataset{dataset_id:03d}_{_DATASET_NAMES[other]}"
        if other != kind and clash.is_dir():
            raise ValueError(f"{clash} already has dataset id {dataset_id}, so -d {dataset_id} would name two "
                             "datasets; pass another dataset id or another output folder.")


def _check_arguments(dataset_id, num_cases, shape, spacing, noise) -> None:
    if int(dataset_id) < 0:
        raise ValueError(f"dataset_id must be a non-negative integer, got {dataset_id}.")
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}.")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels (X Y Z), got {tuple(shape)}.")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm (X Y Z), got {tuple(spacing)}.")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (0 = noise-free), got {noise}.")


def _remove_stale_cases(folder: Path, keep: set[str], name: str) -> None:
    """Delete demo case files named `name`_XXX (and only those) left by an earlier run with more cases."""
    case_file = re.compile(rf"^{name}_(\d+)(_\d{{4}})?{re.escape(FILE_ENDING)}$")
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((folder / sub).glob(f"{name}_*{FILE_ENDING}")):
            match = case_file.match(path.name)
            if match and f"{name}_{match.group(1)}" not in keep:
                path.unlink()
