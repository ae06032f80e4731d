"""Validation of a recon task after training: each validation case degraded into its bundle as diffens_degrade does,
reconstructed by DDS as diffens_predict does, scored against its reference; and the per-timestep diagnostic."""
import json
import shutil

import numpy as np
import pytest

from recon_datasets import ellipsoid_recon_dataset

from diffens_auto import paths
from diffens_auto.evaluation import evaluate_folders, psnr, ssim3d
from diffens_auto.imageio import read_image, read_kspace_bundle
from diffens_auto.inference.degrade_inputs import degrade_folder
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
from diffens_auto.workflows.train import train

DATASET, PLANS, TASK = "Dataset904_DemoEllipses", "diffensPlans_tiny", "recon"
KSPACE = {"type": "kspace", "mask": "poisson", "acceleration": 4, "acs": 6, "slice_axis": 2}


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """Three 24^3 ellipsoid phantoms with a recon task; 2d_axial trained 2 iterations on fold 0 and validated."""
    root = tmp_path_factory.mktemp("recon_validation")
    with pytest.MonkeyPatch.context() as monkeypatch:
        ellipsoid_recon_dataset(root, monkeypatch, 904, 3, kspace=KSPACE)
        plan_and_preprocess(904, preset="tiny", num_processes=1)
        folder = train(904, TASK, "2d_axial", 0, plans_name=PLANS, num_epochs=1, iterations_per_epoch=2,
                       echo=False, val_steps=2)
    return root, folder / "validation"


@pytest.fixture
def folders(validated, monkeypatch):
    """The run's diffens_* folders for one test; returns (root, the validation folder)."""
    root, _ = validated
    for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        monkeypatch.setenv(variable, str(root / variable))
    return validated


def test_recon_validation_scores_every_case_on_its_reference_grid(folders):
    root, validation = folders
    summary = json.loads((validation / "summary.json").read_text())
    splits = json.loads((root / paths.PREPROCESSED_VARIABLE / DATASET / "splits_final.json").read_text())
    assert [r["case"] for r in summary["cases"]] == sorted(splits[0]["val"]) and summary["steps"] == 2
    for row in summary["cases"]:
        assert row["status"] == "done", row["message"]
        reference, reference_props = read_image(root / paths.RAW_VARIABLE / DATASET / "imagesTr" /
                                                f"{row['case']}_0000.nii.gz")
        prediction, props = read_image(validation / f"{row['case']}.nii.gz")
        assert prediction.shape == reference.shape and prediction.min() >= 0
        assert np.allclose(props["origin"], reference_props["origin"]) and props["spacing"] == reference_props[
            "spacing"]
        assert row["psnr"] == pytest.approx(psnr(reference, prediction), abs=1e-4)
        assert row["ssim"] == pytest.approx(ssim3d(reference, prediction), abs=1e-6)
    assert all(summary["mean"][k] is not None for k in ("psnr", "ssim", "mae", "psnr_foreground"))


def test_the_bundles_are_diffens_degrades_and_the_outputs_diffens_predicts(folders, tmp_path):
    root, validation = folders
    cases = sorted(p.name[: -len(".npz")] for p in (validation / "bundles").glob("*.npz"))
    assert cases and all((validation / "bundles" / f"{c}_reference.nii.gz").is_file() for c in cases)
    # diffens_degrade -t recon (default seed 0) of the same raw scans writes the same bundles
    raw_images = tmp_path / "hr"
    raw_images.mkdir()
    for case in cases:
        shutil.copy(root / paths.RAW_VARIABLE / DATASET / "imagesTr" / f"{case}_0000.nii.gz", raw_images)
    degrade_folder(raw_images, tmp_path / "bundles", 904, TASK, verbose=False)
    for case in cases:
        ours, theirs = (read_kspace_bundle(folder / f"{case}.npz") for folder in (validation / "bundles",
                                                                                  tmp_path / "bundles"))
        assert np.array_equal(ours.mask, theirs.mask) and np.array_equal(ours.kspace, theirs.kspace)
    # diffens_predict with the validation's settings reconstructs them to the same images
    predictor = DiffensPredictor(steps=2, seed=0, progress=False).initialize_from_trained_model(
        904, TASK, "2d_axial", 0)
    summary = predictor.predict_from_files(validation / "bundles", tmp_path / "predicted")
    assert summary["failed"] == 0
    for case in cases:
        assert np.array_equal(read_image(tmp_path / "predicted" / f"{case}.nii.gz")[0],
                              read_image(validation / f"{case}.nii.gz")[0])
    # and diffens_evaluate -ref validation/bundles -pred validation scores them as validation did
    rows = json.loads((validation / "summary.json").read_text())["cases"]
    evaluation = evaluate_folders(validation / "bundles", validation, output_file=tmp_path / "evaluation.json",
                                  num_processes=1, mmd=False, verbose=False)
    scored = {r["case"]: r for r in evaluation["per_case"] if r["region"] == "all"}
    for row in rows:
        assert scored[row["case"]]["psnr"] == pytest.approx(row["psnr"], abs=1e-4)
        assert scored[row["case"]]["ssim"] == pytest.approx(row["ssim"], abs=1e-6)


def test_the_timestep_diagnostic_of_an_unconditional_prior(folders):
    _, validation = folders
    summary = json.loads((validation / "summary.json").read_text())
    assert summary["timestep_diagnostic"] == "timestep_diagnostic.json"
    diagnostic = json.loads((validation / "timestep_diagnostic.json").read_text())
    assert diagnostic["task"] == TASK and set(diagnostic["curves"]) == {"2d_axial", "trivial (x0 = 0)"}
    assert all(v is not None and np.isfinite(v) for v in diagnostic["curves"]["2d_axial"]["eps_mse"])
