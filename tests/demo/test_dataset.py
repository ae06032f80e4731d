"""Tests of the synthetic DemoBrain dataset: determinism, geometry, contrast, dataset.json and the command."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from diffens_auto.demo.dataset import (case_identifier, demo_cases, demo_dataset_json, direction_from_orientation,
                                       make_demo_dataset, sample_demo_case)
from diffens_auto.demo.phantom import CHANNELS, TISSUES, Grid, render_case
from diffens_auto.run.make_demo_dataset import make_demo_dataset_entry

SMALL = dict(num_cases=3, shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0))
LABEL = {name: value for value, name in enumerate(TISSUES)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("raw"), dataset_id=900, seed=0, **SMALL)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _channels(folder: Path, case_id: str) -> list[sitk.Image]:
    return [sitk.ReadImage(str(folder / "imagesTr" / f"{case_id}_{c:04d}.nii.gz")) for c in range(len(CHANNELS))]


def _label(folder: Path, case_id: str) -> sitk.Image:
    return sitk.ReadImage(str(folder / "labelsTr" / f"{case_id}.nii.gz"))


def _geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_layout_and_names(dataset):
    assert dataset.name == "Dataset900_DemoBrain"
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    labels = sorted(p.name for p in (dataset / "labelsTr").iterdir())
    assert images == [f"DemoBrain_{i:03d}_{c:04d}.nii.gz" for i in range(3) for c in range(4)]
    assert labels == [f"DemoBrain_{i:03d}.nii.gz" for i in range(3)]
    assert not [p for p in dataset.rglob("*") if ".tmp" in p.name]


def test_same_seed_gives_identical_files(dataset, tmp_path):
    again = make_demo_dataset(tmp_path, dataset_id=900, seed=0, **SMALL)
    assert _files(again) == _files(dataset)


def test_different_seeds_differ(dataset, tmp_path):
    other = make_demo_dataset(tmp_path, dataset_id=900, seed=1, **SMALL)
    first, second = _files(dataset), _files(other)
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first if name.endswith(".nii.gz"))


def test_channels_and_labels_share_geometry_and_types(dataset):
    for i in range(3):
        case_id = case_identifier(i)
        images, label = _channels(dataset, case_id), _label(dataset, case_id)
        assert all(_geometry(image) == _geometry(label) for image in images)
        assert all(image.GetPixelID() == sitk.sitkFloat32 for image in images)
        assert label.GetPixelID() == sitk.sitkUInt8


def test_background_is_exactly_zero_and_mask_is_shared(dataset):
    for i in range(3):
        case_id = case_identifier(i)
        arrays = [sitk.GetArrayFromImage(image) for image in _channels(dataset, case_id)]
        head = sitk.GetArrayFromImage(_label(dataset, case_id)) > 0
        assert head.any() and not head.all()
        for array in arrays:
            assert np.all(array[~head] == 0.0)
            assert np.all(array[head] > 0.0)


def test_head_keeps_a_background_margin_in_default_cases():
    for case in demo_cases(num_cases=5):
        _, labels = render_case(case, noise=0.0)
        head = labels > 0
        for axis in range(3):
            border = np.moveaxis(head, axis, 0)
            assert not border[:2].any() and not border[-2:].any(), (case.case_id, axis)


def test_default_cases_cover_oblique_permuted_and_anisotropic_grids():
    cases = demo_cases()
    assert len(cases) == 10
    kinds = {"oblique": 0, "permuted": 0, "anisotropic": 0, "axis_aligned": 0}
    for case in cases:
        direction = case.grid.direction_matrix
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
        closest = np.argmax(np.abs(direction), axis=0)
        angle = np.degrees(np.arccos(np.clip(np.abs(direction).max(axis=0).min(), -1.0, 1.0)))
        if angle > 1.0:
            kinds["oblique"] += 1
            assert angle <= 25.0 + 1e-6
        else:
            kinds["axis_aligned"] += 1
        kinds["permuted"] += int(list(closest) != [0, 1, 2])
        spacing = np.asarray(case.grid.spacing)
        kinds["anisotropic"] += int(spacing.max() / spacing.min() > 1.5)
        assert np.linalg.norm(case.grid.origin) > 1.0
    assert all(count >= 1 for count in kinds.values()), kinds


def test_small_dataset_already_has_every_kind_of_grid(dataset):
    spacings, permuted, oblique = [], False, False
    for i in range(3):
        image = _label(dataset, case_identifier(i))
        direction = np.array(image.GetDirection()).reshape(3, 3)
        spacings.append(np.array(image.GetSpacing()))
        permuted |= list(np.argmax(np.abs(direction), axis=0)) != [0, 1, 2]
        oblique |= np.abs(direction).max(axis=0).min() < np.cos(np.radians(1.0))
    assert permuted and oblique
    assert any(s.max() / s.min() > 1.5 for s in spacings)


def test_written_geometry_matches_the_phantom_at_physical_points(dataset):
    case = sample_demo_case(1, seed=0, shape=SMALL["shape"], spacing=SMALL["spacing"])
    image = _channels(dataset, case.case_id)[0]
    grid = Grid.from_image(image)
    assert grid.shape == case.grid.shape
    np.testing.assert_allclose(grid.spacing, case.grid.spacing, rtol=1e-6)
    np.testing.assert_allclose(grid.origin, case.grid.origin, atol=1e-4)
    np.testing.assert_allclose(grid.direction_matrix, case.grid.direction_matrix, atol=1e-6)
    for index in [(0, 0, 0), (3, 7, 2), tuple(n - 1 for n in grid.shape)]:
        sitk_point = image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index])
        np.testing.assert_allclose(case.grid.index_to_world(np.array([index]))[0], sitk_point, atol=1e-4)


def test_noise_free_files_equal_the_rendered_phantom(tmp_path):
    folder = make_demo_dataset(tmp_path, noise=0.0, **SMALL)
    for case in demo_cases(seed=0, noise=0.0, **SMALL):
        images, labels = render_case(case)
        channels = _channels(folder, case.case_id)
        on_disk = np.stack([sitk.GetArrayFromImage(image).transpose(2, 1, 0) for image in channels])
        assert np.array_equal(on_disk, images)
        assert np.array_equal(sitk.GetArrayFromImage(_label(folder, case.case_id)).transpose(2, 1, 0), labels)


def test_noise_is_added_only_inside_the_head():
    case = sample_demo_case(0, **{k: v for k, v in SMALL.items() if k != "num_cases"})
    clean, labels = render_case(case, noise=0.0)
    noisy, same_labels = render_case(case)
    assert np.array_equal(labels, same_labels)
    head = labels > 0
    assert np.all(noisy[:, ~head] == 0.0)
    relative = np.abs(noisy - clean)[:, head] / clean[:, head]
    assert 0.005 < float(np.median(relative)) < 0.1


def test_phantom_is_one_function_of_world_position():
    case = sample_demo_case(4, seed=2)
    grid = case.grid
    shifted = Grid(
        (grid.shape[0] - 5, grid.shape[1], grid.shape[2]),
        grid.spacing,
        tuple(grid.index_to_world(np.array([[5, 0, 0]]))[0]),
        grid.direction,
    )
    full, full_labels = render_case(case, noise=0.0)
    part, part_labels = render_case(case, shifted, noise=0.0)
    np.testing.assert_allclose(part, full[:, 5:], rtol=1e-4, atol=1e-2)
    assert np.mean(part_labels == full_labels[5:]) > 0.999


def test_contrasts_follow_the_tissues(dataset):
    sums, counts = np.zeros((len(TISSUES), 4)), np.zeros(len(TISSUES))
    for i in range(3):
        case_id = case_identifier(i)
        arrays = np.stack([sitk.GetArrayFromImage(image) for image in _channels(dataset, case_id)])
        labels = sitk.GetArrayFromImage(_label(dataset, case_id))
        for value in range(len(TISSUES)):
            sums[value] += arrays[:, labels == value].sum(axis=1)
            counts[value] += (labels == value).sum()
    assert np.all(counts > 0), counts
    mean = {name: dict(zip(CHANNELS, sums[value] / counts[value])) for name, value in LABEL.items()}
    assert mean["oedema"]["FLAIR"] > mean["white_matter"]["FLAIR"] > mean["CSF"]["FLAIR"]
    assert mean["enhancing_rim"]["T1ce"] > mean["enhancing_rim"]["T1"]
    assert mean["enhancing_rim"]["T1ce"] > mean["white_matter"]["T1ce"]
    assert mean["white_matter"]["T1"] > mean["grey_matter"]["T1"] > mean["CSF"]["T1"]
    assert mean["CSF"]["T2"] > mean["grey_matter"]["T2"] > mean["white_matter"]["T2"]
    assert mean["background"] == {channel: 0.0 for channel in CHANNELS}


def test_dataset_json(dataset):
    content = json.loads((dataset / "dataset.json").read_text())
    assert content["name"] == "DemoBrain"
    assert isinstance(content["description"], str) and content["description"]
    assert content["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert content["labels"] == {
        "background": 0, "CSF": 1, "grey_matter": 2, "white_matter": 3,
        "oedema": 4, "necrotic_core": 5, "enhancing_rim": 6,
    }
    assert content["numTraining"] == 3
    assert content["file_ending"] == ".nii.gz"
    avgpool = {"type": "avgpool", "factor": [4, 4, 4]}
    assert content["tasks"] == {
        "sr": {"target": "FLAIR", "inputs": [], "degradation": avgpool},
        "mt": {"target": "FLAIR", "inputs": ["T1ce"]},
        "both": {"target": "FLAIR", "inputs": ["T1ce"], "degradation": avgpool},
    }
    assert demo_dataset_json(3)["tasks"] == content["tasks"]


def test_rerun_with_fewer_cases_removes_stale_ones(tmp_path):
    make_demo_dataset(tmp_path, **SMALL)
    folder = make_demo_dataset(tmp_path, **{**SMALL, "num_cases": 2})
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["DemoBrain_000.nii.gz", "DemoBrain_001.nii.gz"]
    assert len(list((folder / "imagesTr").iterdir())) == 8
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2


def test_orientation_codes():
    np.testing.assert_array_equal(direction_from_orientation("LPS"), np.eye(3))
    np.testing.assert_array_equal(direction_from_orientation("RAS"), np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(direction_from_orientation("PIR"), [[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    for bad in ("RLS", "XYZ", "RA"):
        with pytest.raises(ValueError):
            direction_from_orientation(bad)


def test_too_small_field_of_view_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        make_demo_dataset(tmp_path, num_cases=1, shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0))


def test_entry_writes_the_dataset(tmp_path, monkeypatch):
    argv = ["diffens_make_demo_dataset", "-d", "901", "-n", "2", "--shape", "24", "24", "24",
            "--spacing", "2", "2", "2", "--seed", "3", "-o", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    make_demo_dataset_entry()
    folder = tmp_path / "Dataset901_DemoBrain"
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert len(list((folder / "imagesTr").iterdir())) == 8
    assert _files(folder) == _files(make_demo_dataset(tmp_path / "api", 901, num_cases=2, shape=(24, 24, 24),
                                                      spacing=(2.0, 2.0, 2.0), seed=3))


def test_entry_defaults_to_the_raw_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("diffens_raw", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["diffens_make_demo_dataset", "-d", "7", "-n", "1", "--shape", "24", "24", "24"])
    make_demo_dataset_entry()
    assert (tmp_path / "Dataset007_DemoBrain" / "labelsTr" / "DemoBrain_000.nii.gz").is_file()


def test_module_runs_as_a_script(tmp_path):
    command = [sys.executable, "-m", "diffens_auto.run.make_demo_dataset", "-n", "1", "--shape", "24", "24", "24",
               "-o", str(tmp_path)]
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "Dataset900_DemoBrain" / "dataset.json").is_file()


# Digests of the pixels, geometry and dataset.json that the brain kind wrote for this case before the ellipsoid
# kind existed; they change only if the brain phantoms do (or numpy's floating point on another platform).
BRAIN_REFERENCE = dict(num_cases=2, shape=(16, 16, 16), spacing=(3.0, 3.0, 3.0), seed=5)
BRAIN_IMAGES_SHA256 = "8c8c1bbc0c5f6e5ce218e3cbf9201ab4d83b6590ca2882422e8bbbc1daeaf990"
BRAIN_JSON_SHA256 = "5b0c3addbb4ea9769815e55267af260f34d4efa2368ab5e0584acb59bccc3e5f"


def _images_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                            image.GetPixelIDTypeAsString())).encode())
        digest.update(sitk.GetArrayFromImage(image).tobytes())
    return digest.hexdigest()


def test_brain_kind_is_unchanged_and_the_default(tmp_path):
    default = make_demo_dataset(tmp_path / "default", 900, **BRAIN_REFERENCE)
    brain = make_demo_dataset(tmp_path / "brain", 900, kind="brain", **BRAIN_REFERENCE)
    assert _files(brain) == _files(default)
    assert _images_digest(brain) == BRAIN_IMAGES_SHA256
    assert hashlib.sha256((brain / "dataset.json").read_bytes()).hexdigest() == BRAIN_JSON_SHA256


def test_entry_kind_brain_is_the_default(tmp_path, monkeypatch):
    common = ["-n", "1", "--shape", "16", "16", "16", "--spacing", "3", "3", "3"]
    for sub, extra in (("default", []), ("brain", ["--kind", "brain"])):
        monkeypatch.setattr(sys, "argv", ["diffens_make_demo_dataset", *common, *extra, "-o", str(tmp_path / sub)])
        make_demo_dataset_entry()
    assert _files(tmp_path / "brain" / "Dataset900_DemoBrain") == _files(tmp_path / "default" / "Dataset900_DemoBrain")
