"""Tests of the ellipsoid phantoms and the DemoEllipses dataset: determinism, field of view, files and the command."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffens_auto.dataset.dataset_json import load_dataset_json
from diffens_auto.demo.dataset import ellipsoid_cases, ellipsoid_dataset_json, make_demo_dataset, sample_ellipsoid_case
from diffens_auto.demo.ellipsoids import (PEAK_INTENSITY, ellipsoid_indicator, field_of_view_radius,
                                          render_ellipsoid_phantom)
from diffens_auto.imageio import read_image
from diffens_auto.run.make_demo_dataset import make_demo_dataset_entry

SMALL = dict(num_cases=3, shape=(24, 24, 16), spacing=(2.0, 2.0, 3.0))
GEOMETRY = {k: v for k, v in SMALL.items() if k != "num_cases"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("raw"), 901, seed=0, kind="ellipses", **SMALL)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _distance_from_centre(phantom) -> np.ndarray:
    grid = phantom.grid
    return np.linalg.norm(grid.world_points() - grid.centre, axis=1).reshape(grid.shape)


def test_layout_and_names(dataset):
    assert dataset.name == "Dataset901_DemoEllipses"
    assert sorted(p.name for p in dataset.iterdir()) == ["dataset.json", "imagesTr"]
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    assert images == [f"DemoEllipses_{i:03d}_0000.nii.gz" for i in range(3)]


def test_same_seed_gives_identical_files(dataset, tmp_path):
    again = make_demo_dataset(tmp_path, 901, seed=0, kind="ellipses", **SMALL)
    assert _files(again) == _files(dataset)


def test_different_seeds_differ(dataset, tmp_path):
    first, second = _files(dataset), _files(make_demo_dataset(tmp_path, 901, seed=1, kind="ellipses", **SMALL))
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first if name.endswith(".nii.gz"))


def test_case_does_not_depend_on_the_number_of_cases():
    few, many = ellipsoid_cases(2, seed=4, **GEOMETRY), ellipsoid_cases(5, seed=4, **GEOMETRY)
    for a, b in zip(few, many):
        assert np.array_equal(render_ellipsoid_phantom(a), render_ellipsoid_phantom(b))


def test_files_hold_the_grid_and_the_rendered_phantom(dataset):
    for phantom in ellipsoid_cases(seed=0, **SMALL):
        array, props = read_image(dataset / "imagesTr" / f"{phantom.case_id}_0000.nii.gz")
        assert array.dtype == np.float32
        assert array.shape == GEOMETRY["shape"]
        np.testing.assert_allclose(props["spacing"], GEOMETRY["spacing"])
        assert props["reorientation"] == {"permutation": [0, 1, 2], "flips": [False, False, False]}
        centre = np.asarray(props["origin"]) + np.asarray(props["direction"]) @ (
            np.asarray(props["spacing"]) * (np.asarray(array.shape) - 1) / 2.0)
        np.testing.assert_allclose(centre, 0.0, atol=1e-4)
        assert np.array_equal(array, render_ellipsoid_phantom(phantom))


def test_values_are_non_negative_and_zero_outside_the_field_of_view():
    for phantom in ellipsoid_cases(6, seed=2, **GEOMETRY):
        distance = _distance_from_centre(phantom)
        for noise in (0.0, 0.05):
            image = render_ellipsoid_phantom(phantom, noise=noise)
            assert image.min() >= 0.0
            assert np.all(image[distance > phantom.fov_radius] == 0.0)
        clean = render_ellipsoid_phantom(phantom, noise=0.0)
        assert clean.max() == pytest.approx(PEAK_INTENSITY, rel=1e-6)
        assert 0.01 < np.mean(clean > 0) < 0.9


def test_field_of_view_keeps_a_margin_inside_the_grid():
    phantom = sample_ellipsoid_case(0, **GEOMETRY)
    assert phantom.fov_radius == field_of_view_radius(phantom.grid)
    # 16 slices of 3 mm: half-extent 22.5 mm, less 2 voxels of the largest spacing.
    assert phantom.fov_radius == pytest.approx(22.5 - 2 * 3.0)
    image = render_ellipsoid_phantom(phantom)
    for axis in range(3):
        border = np.moveaxis(image, axis, 0)
        assert not border[:2].any() and not border[-2:].any()


def test_noise_is_rician_inside_the_field_of_view_only():
    phantom = sample_ellipsoid_case(1, noise=0.05, **GEOMETRY)
    clean, noisy = render_ellipsoid_phantom(phantom, noise=0.0), render_ellipsoid_phantom(phantom)
    inside = _distance_from_centre(phantom) <= phantom.fov_radius
    assert np.all(noisy[~inside] == 0.0) and np.all(noisy[inside] > 0.0)
    background = noisy[inside & (clean == 0.0)]
    # Rician noise of sigma on zero signal has mean sigma * sqrt(pi / 2).
    assert np.mean(background) == pytest.approx(0.05 * PEAK_INTENSITY * np.sqrt(np.pi / 2), rel=0.2)
    assert np.array_equal(noisy, render_ellipsoid_phantom(phantom))


def test_ellipsoids_are_random_rotations_with_bounded_semi_axes():
    phantom = sample_ellipsoid_case(3, **GEOMETRY)
    rotations = phantom.rotations
    gram = np.einsum("kji,kjl->kil", rotations, rotations)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), rotations.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)
    assert phantom.semi_axes.min() >= 1.5 * 3.0 - 1e-12
    assert phantom.semi_axes.max() <= 0.6 * phantom.fov_radius + 1e-12
    assert phantom.intensities[0] > 0 and phantom.intensities.min() >= -0.4 and phantom.intensities.max() <= 1.0
    assert len(phantom.intensities) > 1


def test_indicator_of_a_sphere_is_a_smoothstep_of_the_distance_to_its_surface():
    radius, edge = 5.0, 2.0
    distances = np.linspace(0.0, 10.0, 101)
    offsets = distances[:, None] * np.array([[0.6, 0.0, 0.8]])
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    values = ellipsoid_indicator(offsets, np.full(3, radius), rotation, edge)
    t = np.clip(0.5 - (distances - radius) / edge, 0.0, 1.0)
    np.testing.assert_allclose(values, t * t * (3 - 2 * t), atol=1e-12)
    assert values[0] == 1.0 and np.all(values[distances > radius + edge / 2 + 1e-9] == 0.0)
    assert np.all(np.diff(values) <= 0.0)


def test_indicator_of_an_elongated_ellipsoid_has_the_same_edge_on_every_side():
    semi_axes, edge = np.array([12.0, 3.0, 6.0]), 1.5
    for axis in range(3):
        direction = np.eye(3)[axis]
        surface = semi_axes[axis]
        inner = ellipsoid_indicator((surface - edge / 2 - 0.01) * direction[None], semi_axes, np.eye(3), edge)
        outer = ellipsoid_indicator((surface + edge / 2 + 0.01) * direction[None], semi_axes, np.eye(3), edge)
        middle = ellipsoid_indicator(surface * direction[None], semi_axes, np.eye(3), edge)
        assert inner[0] == 1.0 and outer[0] == 0.0 and middle[0] == pytest.approx(0.5)


def test_dataset_json(dataset):
    content = json.loads((dataset / "dataset.json").read_text())
    assert content["name"] == "DemoEllipses"
    assert "ellipsoid" in content["description"] and "seed 0" in content["description"]
    assert content["channel_names"] == {"0": "T1"}
    assert content["numTraining"] == 3
    assert content["file_ending"] == ".nii.gz"
    assert "labels" not in content
    assert content["tasks"] == {"sr": {"target": "T1", "inputs": [],
                                       "degradation": {"type": "avgpool", "factor": [4, 4, 4]}}}
    assert ellipsoid_dataset_json(3)["tasks"] == content["tasks"]
    spec = load_dataset_json(dataset)
    assert spec.channel_names == {0: "T1"} and list(spec.tasks) == ["sr"] and spec.num_training == 3


def test_rerun_with_fewer_cases_removes_stale_ones(tmp_path):
    make_demo_dataset(tmp_path, 901, kind="ellipses", **SMALL)
    folder = make_demo_dataset(tmp_path, 901, kind="ellipses", **{**SMALL, "num_cases": 1})
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["DemoEllipses_000_0000.nii.gz"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1


def test_unknown_kind_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Unknown demo dataset kind 'circles'; use one of: brain, ellipses"):
        make_demo_dataset(tmp_path, kind="circles", **SMALL)
    assert not any(tmp_path.iterdir())


def test_too_small_field_of_view_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too small for ellipsoid phantoms"):
        make_demo_dataset(tmp_path, 901, kind="ellipses", num_cases=1, shape=(8, 8, 8), spacing=(1.0, 1.0, 1.0))


def test_the_other_kind_with_the_same_id_is_refused(tmp_path):
    make_demo_dataset(tmp_path, 905, kind="ellipses", num_cases=1, shape=(16, 16, 16), spacing=(3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="Dataset905_DemoEllipses already has dataset id 905"):
        make_demo_dataset(tmp_path, 905, num_cases=1, shape=(16, 16, 16), spacing=(3.0, 3.0, 3.0))
    assert not (tmp_path / "Dataset905_DemoBrain").exists()


def test_entry_writes_the_ellipsoid_dataset_with_its_own_default_id(tmp_path, monkeypatch):
    argv = ["diffens_make_demo_dataset", "--kind", "ellipses", "-n", "2", "--shape", "24", "24", "16",
            "--spacing", "2", "2", "3", "--seed", "3", "--noise", "0", "-o", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    make_demo_dataset_entry()
    folder = tmp_path / "Dataset901_DemoEllipses"
    api = make_demo_dataset(tmp_path / "api", 901, kind="ellipses", num_cases=2, seed=3, noise=0.0, **GEOMETRY)
    assert _files(folder) == _files(api)


def test_entry_refuses_an_unknown_kind(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["diffens_make_demo_dataset", "--kind", "circles", "-o", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        make_demo_dataset_entry()
    assert exit_info.value.code == 2
    assert "invalid choice: 'circles'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_module_runs_as_a_script_with_kind_ellipses(tmp_path):
    command = [sys.executable, "-m", "diffens_auto.run.make_demo_dataset", "--kind", "ellipses", "-d", "902",
               "-n", "1", "--shape", "16", "16", "16", "--spacing", "3", "3", "3", "-o", str(tmp_path)]
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Wrote 1 demo cases" in result.stdout
    assert (tmp_path / "Dataset902_DemoEllipses" / "imagesTr" / "DemoEllipses_000_0000.nii.gz").is_file()
