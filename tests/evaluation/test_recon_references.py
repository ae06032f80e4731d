"""The references diffens_degrade -t recon writes beside its bundles (CASE_reference) pair with CASE predictions,
so the bundles' folder is a reference folder as it is."""
import json
import sys

import numpy as np
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto import paths
from diffens_auto.evaluation import evaluate_folders
from diffens_auto.evaluation.case_files import REFERENCE_SUFFIX, pair_case_files
from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference import degrade_inputs
from diffens_auto.inference.degrade_inputs import degrade_folder
from diffens_auto.run.evaluate import evaluate_entry

DATASET_JSON = {"channel_names": {"0": "T1"}, "numTraining": 1, "file_ending": ".nii.gz",
                "tasks": {"recon": {"target": "T1", "inputs": [],
                                    "degradation": {"type": "kspace", "mask": "poisson", "acceleration": 4,
                                                    "acs": 4}}}}


def touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_the_suffix_is_the_one_diffens_degrade_writes():
    assert REFERENCE_SUFFIX == degrade_inputs.REFERENCE_SUFFIX


def test_case_reference_files_pair_with_case_predictions_and_bundles_are_ignored(tmp_path):
    touch(tmp_path / "ref", "a.npz", "a_reference.nii.gz", "b.npz", "b_reference.nii.gz")
    touch(tmp_path / "pred", "a.nii.gz", "b.nii.gz", "b_std.nii.gz")
    cases, extra = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz")
    assert [(c.case, c.reference.name, c.prediction.name, c.problem) for c in cases] == [
        ("a", "a_reference.nii.gz", "a.nii.gz", None), ("b", "b_reference.nii.gz", "b.nii.gz", None)]
    assert cases[1].std.name == "b_std.nii.gz" and extra == []


def test_an_exact_name_wins_over_a_reference_file(tmp_path):
    # CASE<ending> beside CASE_reference<ending>: the exact name is the reference, as for CASE_XXXX files
    touch(tmp_path / "ref", "a.nii.gz", "a_reference.nii.gz")
    touch(tmp_path / "pred", "a.nii.gz")
    with pytest.warns(UserWarning, match="a_reference.nii.gz"):
        (case,), _ = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz")
    assert case.reference.name == "a.nii.gz" and case.problem is None
    # a prediction named CASE_reference keeps its own reference of that name
    touch(tmp_path / "ref2", "x_reference.nii.gz")
    touch(tmp_path / "pred2", "x_reference.nii.gz")
    (case,), _ = pair_case_files(tmp_path / "ref2", tmp_path / "pred2", ".nii.gz")
    assert (case.case, case.prediction.name) == ("x_reference", "x_reference.nii.gz")
    # a reference and a channel file of one case are two candidates: -ref_channel picks the channel
    touch(tmp_path / "ref3", "c_0000.nii.gz", "c_reference.nii.gz")
    touch(tmp_path / "pred3", "c.nii.gz")
    (case,), _ = pair_case_files(tmp_path / "ref3", tmp_path / "pred3", ".nii.gz")
    assert "-ref_channel" in case.problem


def test_the_bundles_folder_of_diffens_degrade_is_the_reference_folder(diffens_folders, tmp_path, monkeypatch):
    raw = diffens_folders[paths.RAW_VARIABLE] / "Dataset044_Recon"
    raw.mkdir()
    (raw / "dataset.json").write_text(json.dumps(DATASET_JSON))
    hr = tmp_path / "hr"
    hr.mkdir()
    for index, case in enumerate(("case_a", "case_b")):
        write_sitk(blob((16, 14, 12), index + 1) * 100, hr / f"{case}_0000.nii.gz", spacing=(1.0, 1.0, 1.5))
    bundles, predictions = tmp_path / "bundles", tmp_path / "predictions"
    assert degrade_folder(hr, bundles, 44, "recon", verbose=False)["num_failed"] == 0
    predictions.mkdir()
    expected = {}
    for index, case in enumerate(("case_a", "case_b")):
        reference, props = read_image(bundles / f"{case}_reference.nii.gz")
        output = reference + np.random.default_rng(index).normal(0, 2.0, reference.shape).astype(np.float32)
        write_image(output, props, predictions / f"{case}.nii.gz")
        mse = np.mean((output.astype(np.float64) - reference) ** 2)
        expected[case] = 10 * np.log10(float(reference.max() - reference.min()) ** 2 / mse)
    results = evaluate_folders(bundles, predictions, num_processes=1, mmd=False, verbose=False)
    rows = {r["case"]: r for r in results["per_case"] if r["region"] == "all"}
    assert results["failed"] == [] and sorted(rows) == ["case_a", "case_b"]
    for case, value in expected.items():
        assert rows[case]["psnr"] == pytest.approx(value, abs=1e-3)
    # and through the command, -ref the bundles' folder as it is
    monkeypatch.setattr(sys, "argv", ["diffens_evaluate", "-ref", str(bundles), "-pred", str(predictions), "-o",
                                      str(tmp_path / "metrics.json"), "-np", "1", "--no_mmd"])
    try:
        evaluate_entry()
    except SystemExit as e:
        assert not e.code
    assert json.loads((tmp_path / "metrics.json").read_text())["mean"] == results["mean"]
