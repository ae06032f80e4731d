"""diffens_degrade -t recon: measurement bundles in the file's axes, references beside them, seeded masks, noise."""
import filecmp
import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthetic_images import blob, write_sitk

from diffens_auto import paths
from diffens_auto.imageio import read_image, read_kspace_bundle
from diffens_auto.inference import degrade_inputs
from diffens_auto.inference.degrade_inputs import FAILED, WRITTEN, case_seeds, degrade_folder
from diffens_auto.operators.kspace_case import FileOrderKSpace

DATASET = "Dataset043_Recon"
KSPACE = {"type": "kspace", "acs": 4}
DATASET_JSON = {
    "channel_names": {"0": "T1"}, "numTraining": 1, "file_ending": ".nii.gz",
    "tasks": {"recon": {"target": "T1", "inputs": [],
                        "degradation": {**KSPACE, "mask": "poisson", "acceleration": 4, "slice_axis": 2}},
              "recon_noisy": {"target": "T1", "degradation": {**KSPACE, "mask": "uniform1d", "acceleration": 3,
                                                              "slice_axis": 1, "noise_std": 2.0}},
              "recon_perslice": {"target": "T1", "degradation": {**KSPACE, "mask": "poisson", "acceleration": 4,
                                                                 "slice_axis": 0, "mask_per_slice": True}}}}
CASES = ("case_a", "case_b", "case_c")


def _oblique_direction():
    """A permuted, flipped axis frame (P, I, R) rotated by 20 degrees: reading it reorders and flips the axes."""
    base = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)   # columns: axis 0 -> P, 1 -> I, 2 -> R (LPS)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return tuple((rotation @ base).flatten())


@pytest.fixture
def hr_folder(diffens_folders, tmp_path):
    """Three fully sampled T1 scans: two axis-aligned of one shape, one oblique in a permuted, flipped order."""
    raw = diffens_folders[paths.RAW_VARIABLE] / DATASET
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps(DATASET_JSON))
    folder = tmp_path / "hr"
    folder.mkdir()
    write_sitk(blob((20, 16, 18), 1), folder / "case_a_0000.nii.gz", spacing=(1.0, 1.0, 1.5), origin=(5.0, -3.0, 2.0))
    # odd sizes on the flipped axes: the mask's reflection about DC differs from a plain reversal there
    write_sitk(blob((17, 21, 16), 2), folder / "case_b_0000.nii.gz", spacing=(0.9, 1.3, 2.1),
               origin=(-12.5, 31.0, 7.25), direction=_oblique_direction())
    write_sitk(blob((20, 16, 18), 3), folder / "case_c_0000.nii.gz", spacing=(1.0, 1.0, 1.5))
    return folder


def _bundles(folder, cases=CASES):
    return {case: read_kspace_bundle(folder / f"{case}.npz") for case in cases}


def _degraded(hr_folder, out, task, seed=0):
    """The bundles of every case, written by degrade_folder into `out`."""
    assert degrade_folder(hr_folder, out, DATASET, task, verbose=False, seed=seed)["num_failed"] == 0
    return _bundles(out)


def _noiseless_kspace(bundle, reference_file):
    """FileOrderKSpace of the bundle's own mask and reorientation applied to the reference scan."""
    operator = FileOrderKSpace(bundle.reorientation, torch.from_numpy(bundle.mask), bundle.fft_axes)
    reference, _ = read_image(reference_file)
    return operator.A(torch.from_numpy(np.ascontiguousarray(reference))).numpy()


def test_bundles_and_references_are_written_on_the_scans_grid(hr_folder, tmp_path):
    out = tmp_path / "recon"
    summary = degrade_folder(hr_folder, out, 43, "recon", verbose=False)
    assert [e["status"] for e in summary["cases"]] == [WRITTEN] * 3 and summary["num_failed"] == 0
    assert "kspace_poisson_4x_acs4_z" in summary["note"] and "no noise" in summary["note"]
    assert summary["cases"][1]["files"] == ["case_b.npz", "case_b_reference.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}{s}" for c in CASES
                                                           for s in (".npz", "_reference.nii.gz"))
    for case, bundle in _bundles(out).items():
        source = hr_folder / f"{case}_0000.nii.gz"
        assert filecmp.cmp(source, out / f"{case}_reference.nii.gz", shallow=False)
        _, props = read_image(source)
        geometry = bundle.props
        assert geometry["shape"] == props["shape"] and geometry["reorientation"] == props["reorientation"]
        assert geometry["io"] == props["io"]
        for key in ("spacing", "origin", "direction"):
            np.testing.assert_allclose(geometry[key], props[key], atol=1e-5)
        assert bundle.kspace.dtype == np.complex64 and bundle.mask.dtype == bool and bundle.noise_std == 0.0
        assert list(bundle.kspace.shape) == list(sitk.ReadImage(str(source)).GetSize())   # the file's own axes
        # noiseless: the stored k-space is exactly the operator applied to the reference, 0 where not sampled
        np.testing.assert_array_equal(bundle.kspace, _noiseless_kspace(bundle, out / f"{case}_reference.nii.gz"))
        assert not np.any(bundle.kspace * ~bundle.mask)
        # one mask for every axial slice: size 1 along the file axis of canonical Z, the FFT over the other two
        slice_file_axis = props["reorientation"]["permutation"][2]
        assert bundle.mask.shape[slice_file_axis] == 1
        assert bundle.fft_axes == tuple(a for a in range(3) if a != slice_file_axis)
        assert bundle.mask.size / bundle.mask.sum() == pytest.approx(4, rel=0.1)
    oblique = read_image(hr_folder / "case_b_0000.nii.gz")[1]["reorientation"]
    assert oblique["permutation"] != [0, 1, 2] and any(oblique["flips"]), "case_b should be permuted and flipped"


def test_masks_are_reproducible_per_seed_and_differ_between_cases(hr_folder, tmp_path):
    first = _degraded(hr_folder, tmp_path / "a", "recon_noisy")
    again = _degraded(hr_folder, tmp_path / "b", "recon_noisy")
    other = _degraded(hr_folder, tmp_path / "c", "recon_noisy", seed=7)
    for case in CASES:
        np.testing.assert_array_equal(first[case].mask, again[case].mask)
        np.testing.assert_array_equal(first[case].kspace, again[case].kspace)   # the noise too
        assert first[case].mask.size / first[case].mask.sum() == pytest.approx(3, rel=0.1)
    assert any(not np.array_equal(first[c].mask, other[c].mask) for c in CASES)
    assert first["case_a"].mask.shape == first["case_c"].mask.shape
    assert not np.array_equal(first["case_a"].mask, first["case_c"].mask)
    # pinned: a change of the derivation would silently give every user's cases other masks
    assert case_seeds(0, "case_a") == case_seeds(0, "case_a") != case_seeds(0, "case_c")
    assert case_seeds(0, "case_a") != case_seeds(1, "case_a")
    assert case_seeds(0, "case_a") == (939461088, 2459805218)


def test_noise_is_complex_gaussian_of_noise_std_on_the_sampled_points_only(hr_folder, tmp_path):
    out = tmp_path / "noisy"
    summary = degrade_folder(hr_folder, out, DATASET, "recon_noisy", verbose=False)
    assert summary["num_written"] == 3 and "std 2 per real and imaginary part" in summary["note"]
    residuals = []
    for case, bundle in _bundles(out).items():
        assert bundle.noise_std == 2.0
        residual = bundle.kspace - _noiseless_kspace(bundle, out / f"{case}_reference.nii.gz")
        mask = np.broadcast_to(bundle.mask, residual.shape)
        assert not np.any(residual[~mask]) and not np.any(bundle.kspace[~mask])
        residuals.append(residual[mask])
    residual = np.concatenate(residuals)
    assert residual.size > 3000
    for part in (residual.real, residual.imag):
        assert np.std(part) == pytest.approx(2.0, rel=0.05) and abs(np.mean(part)) < 0.1
    assert abs(np.corrcoef(residual.real, residual.imag)[0, 1]) < 0.05


def test_per_slice_masks_differ_between_slices(hr_folder, tmp_path):
    out = tmp_path / "perslice"
    degrade_folder(hr_folder, out, DATASET, "recon_perslice", verbose=False)
    for case, bundle in _bundles(out).items():
        _, props = read_image(hr_folder / f"{case}_0000.nii.gz")
        assert bundle.mask.shape == bundle.kspace.shape
        slice_file_axis = props["reorientation"]["permutation"][0]   # slice_axis 0: sagittal slices
        slices = np.moveaxis(bundle.mask, slice_file_axis, 0)
        assert len({s.tobytes() for s in slices}) == len(slices)
        assert slices[0].size / slices.sum(axis=(1, 2)).mean() == pytest.approx(4, rel=0.1)
        np.testing.assert_array_equal(bundle.kspace, _noiseless_kspace(bundle, out / f"{case}_reference.nii.gz"))


def test_a_bad_case_fails_alone_and_leaves_nothing(hr_folder, tmp_path, monkeypatch):
    (hr_folder / "case_c_0000.nii.gz").write_bytes(b"not an image")
    with_nan = blob((16, 16, 16), 4)
    with_nan[8, 8, 8] = np.nan
    write_sitk(with_nan, hr_folder / "case_d_0000.nii.gz")
    out = tmp_path / "recon"
    summary = degrade_folder(hr_folder, out, DATASET, "recon", verbose=False)
    status = {e["case"]: e for e in summary["cases"]}
    assert summary["num_written"] == 2 and summary["num_failed"] == 2
    assert status["case_c"]["status"] == FAILED and "case_c_0000.nii.gz" in status["case_c"]["message"]
    assert status["case_d"]["status"] == FAILED and "NaN" in status["case_d"]["message"]
    assert status["case_c"]["files"] == [] and status["case_a"]["status"] == WRITTEN
    assert sorted(p.name for p in out.iterdir()) == ["case_a.npz", "case_a_reference.nii.gz", "case_b.npz",
                                                     "case_b_reference.nii.gz"]

    def full_disk(bundle, path):
        raise OSError(f"{path}: no space left on device")
    monkeypatch.setattr(degrade_inputs, "write_kspace_bundle", full_disk)
    again = degrade_folder(hr_folder, tmp_path / "full", DATASET, "recon", verbose=False)
    assert again["num_written"] == 0 and "no space left" in again["cases"][0]["message"]
    assert list((tmp_path / "full").iterdir()) == []   # the reference went with its bundle


def test_a_bad_seed_is_refused(hr_folder, tmp_path):
    with pytest.raises(ValueError, match="integer >= 0"):
        degrade_folder(hr_folder, tmp_path / "out", DATASET, "recon", verbose=False, seed=-1)


def test_command_writes_the_bundles_and_prints_a_summary(hr_folder, tmp_path, monkeypatch, capsys):
    from diffens_auto.run.degrade import degrade_entry
    argv = ["diffens_degrade", "-i", str(hr_folder), "-o", str(tmp_path / "out"), "-d", "43", "-t", "recon"]
    monkeypatch.setattr(sys, "argv", argv + ["--seed", "3"])
    degrade_entry()   # returns normally: exit status 0
    out = capsys.readouterr().out
    assert "task recon: T1 undersampled in k-space" in out and "seed 3" in out and "3 case(s) written" in out
    assert (tmp_path / "out" / "case_b.npz").is_file() and (tmp_path / "out" / "case_b_reference.nii.gz").is_file()
    monkeypatch.setattr(sys, "argv", argv + ["--seed", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        degrade_entry()
    assert exit_info.value.code == 2 and "--seed -1" in capsys.readouterr().err
