"""diffens_degrade: degraded targets on their block-centre grid, inputs copied, bad cases reported, dataset lookup."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic_images import blob, write_sitk

from diffens_auto import paths
from diffens_auto.dataset.dataset_json import DatasetError
from diffens_auto.dataset.lookup import find_dataset_json
from diffens_auto.imageio import read_image
from diffens_auto.inference.degrade_inputs import FAILED, WRITTEN, degrade_folder

DATASET = "Dataset042_Degrade"
FACTOR = [2, 3, 2]
DATASET_JSON = {
    "channel_names": {"0": "T1ce", "1": "FLAIR"}, "numTraining": 1, "file_ending": ".nii.gz",
    "tasks": {"sr": {"target": "FLAIR", "inputs": [], "degradation": {"type": "avgpool", "factor": FACTOR}},
              "mt": {"target": "FLAIR", "inputs": ["T1ce"]},
              "both": {"target": "FLAIR", "inputs": ["T1ce"], "degradation": {"type": "avgpool", "factor": FACTOR}}}}


def _oblique_direction():
    """A permuted, flipped axis frame (P, I, R) rotated by 20 degrees: reading it reorders the axes."""
    base = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)   # columns: axis 0 -> P, 1 -> I, 2 -> R (LPS)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return tuple((rotation @ base).flatten())


def _write_case(folder, case, seed, shape=(9, 8, 7)):
    """Both channels of `case` on one oblique, anisotropic grid with a non-zero origin (shape not divisible)."""
    for channel in (0, 1):
        write_sitk(blob(shape, seed + channel) + 3.0 * channel, folder / f"{case}_{channel:04d}.nii.gz",
                   spacing=(0.9, 1.3, 2.1), origin=(-12.5, 31.0, 7.25), direction=_oblique_direction())


@pytest.fixture
def hr_folder(diffens_folders, tmp_path):
    raw = diffens_folders[paths.RAW_VARIABLE] / DATASET
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps(DATASET_JSON))
    folder = tmp_path / "hr"
    folder.mkdir()
    _write_case(folder, "case_a", 1)
    _write_case(folder, "case_b", 5, shape=(8, 9, 6))
    return folder


def _block_means(array, factor):
    """Average pooling written out block by block (a partial last block averages its real voxels)."""
    shape = [-(-n // f) for n, f in zip(array.shape, factor)]
    out = np.empty(shape)
    for i in np.ndindex(*shape):
        out[i] = array[tuple(slice(b * f, b * f + f) for b, f in zip(i, factor))].mean()
    return out


def test_target_is_degraded_onto_the_block_centre_grid(hr_folder, tmp_path):
    out = tmp_path / "lr"
    summary = degrade_folder(hr_folder, out, 42, "sr", verbose=False)
    assert [e["status"] for e in summary["cases"]] == [WRITTEN, WRITTEN] and summary["num_failed"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_a_0001.nii.gz", "case_b_0001.nii.gz"]
    for case in ("case_a", "case_b"):
        hr, hr_props = read_image(hr_folder / f"{case}_0001.nii.gz")
        lr, lr_props = read_image(out / f"{case}_0001.nii.gz")
        assert hr_props["reorientation"]["permutation"] != [0, 1, 2], "the test grid should reorder the axes"
        factor = np.array(FACTOR)
        spacing, direction = np.array(hr_props["spacing"]), np.array(hr_props["direction"])
        assert list(lr.shape) == lr_props["shape"] == [-(-n // f) for n, f in zip(hr.shape, FACTOR)]
        np.testing.assert_allclose(lr_props["spacing"], spacing * factor, rtol=1e-6)
        np.testing.assert_allclose(lr_props["origin"],
                                   np.array(hr_props["origin"]) + direction @ (spacing * (factor - 1) / 2), atol=1e-4)
        np.testing.assert_allclose(lr_props["direction"], direction, atol=1e-6)
        np.testing.assert_allclose(lr, _block_means(hr.astype(np.float64), FACTOR), rtol=1e-5, atol=1e-4)
        written = sitk.ReadImage(str(out / f"{case}_0001.nii.gz"))
        original = sitk.ReadImage(str(hr_folder / f"{case}_0001.nii.gz"))
        assert written.GetPixelID() == sitk.sitkFloat32
        np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)


def test_other_inputs_are_copied_and_a_task_without_degradation_only_copies(hr_folder, tmp_path):
    both = degrade_folder(hr_folder, tmp_path / "both", DATASET, "both", verbose=False)
    assert both["num_written"] == 2 and both["degradation"] == {"type": "avgpool", "factor": FACTOR}
    for case in ("case_a", "case_b"):
        assert filecmp.cmp(hr_folder / f"{case}_0000.nii.gz", tmp_path / "both" / f"{case}_0000.nii.gz",
                           shallow=False)
        assert read_image(tmp_path / "both" / f"{case}_0001.nii.gz")[0].shape != \
            read_image(hr_folder / f"{case}_0001.nii.gz")[0].shape
    mt = degrade_folder(hr_folder, tmp_path / "mt", DATASET, "mt", verbose=False)
    assert mt["degradation"] is None and "no degradation" in mt["note"]
    assert sorted(p.name for p in (tmp_path / "mt").iterdir()) == ["case_a_0000.nii.gz", "case_b_0000.nii.gz"]
    assert filecmp.cmp(hr_folder / "case_a_0000.nii.gz", tmp_path / "mt" / "case_a_0000.nii.gz", shallow=False)


def test_bad_cases_are_reported_and_the_good_one_is_written(hr_folder, tmp_path):
    (hr_folder / "case_b_0001.nii.gz").write_bytes(b"not an image")              # unreadable target
    _write_case(hr_folder, "case_c", 9)
    four_d = sitk.GetImageFromArray(np.zeros((2, 6, 8, 9), np.float32), isVector=False)  # a 4D target
    sitk.WriteImage(four_d, str(hr_folder / "case_c_0001.nii.gz"))
    write_sitk(blob((9, 8, 7), 3), hr_folder / "case_d_0000.nii.gz")             # T1ce without its FLAIR
    out = tmp_path / "lr"
    summary = degrade_folder(hr_folder, out, DATASET, "both", verbose=False)
    status = {e["case"]: (e["status"], e["message"]) for e in summary["cases"]}
    assert status["case_a"][0] == WRITTEN and summary["num_written"] == 1 and summary["num_failed"] == 3
    assert status["case_b"][0] == FAILED and "case_b_0001.nii.gz" in status["case_b"][1]
    assert status["case_c"][0] == FAILED and "4D" in status["case_c"][1]
    assert status["case_d"][0] == FAILED and "missing" in status["case_d"][1]
    # a failed case leaves nothing behind (its T1ce is not copied either), and no temporary files remain
    assert sorted(p.name for p in out.iterdir()) == ["case_a_0000.nii.gz", "case_a_0001.nii.gz"]


def test_unknown_task_and_same_folder_are_refused(hr_folder):
    with pytest.raises(DatasetError, match="no task 'seg'"):
        degrade_folder(hr_folder, hr_folder.parent / "lr", DATASET, "seg", verbose=False)
    with pytest.raises(ValueError, match="is the input folder"):
        degrade_folder(hr_folder, hr_folder, DATASET, "sr", verbose=False)


def test_dataset_json_is_found_beside_an_installed_model(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.RAW_VARIABLE, raising=False)
    monkeypatch.delenv(paths.PREPROCESSED_VARIABLE, raising=False)
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(tmp_path))
    model = tmp_path / DATASET / "sr" / "2d_axial__diffensPlans"
    model.mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps(DATASET_JSON))
    spec = find_dataset_json(42)
    assert spec.path == model and sorted(spec.tasks) == ["both", "mt", "sr"]
    (model / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="no dataset.json found"):
        find_dataset_json(DATASET)


def test_command_exit_status(hr_folder, tmp_path, monkeypatch, capsys):
    from diffens_auto.run.degrade import degrade_entry
    monkeypatch.setattr(sys, "argv", ["diffens_degrade", "-i", str(hr_folder), "-o", str(tmp_path / "lr"), "-d", "42",
                                      "-t", "both"])
    degrade_entry()   # returns normally: exit status 0
    assert "2 case(s) written" in capsys.readouterr().out
    (hr_folder / "case_b_0000.nii.gz").write_bytes(b"broken")
    done = subprocess.run([sys.executable, "-m", "diffens_auto.run.degrade", "-i", str(hr_folder), "-o",
                           str(tmp_path / "lr2"), "-d", "42", "-t", "both"], capture_output=True, text=True,
                          env=dict(os.environ))
    assert done.returncode == 1 and "FAILED case_b" in done.stderr and "1 case(s) written" in done.stdout
    assert (tmp_path / "lr2" / "case_a_0001.nii.gz").is_file()
