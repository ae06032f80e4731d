"""A recon task end to end through the commands: plan and preprocess (tiny), train, degrade into bundles, predict
(DDS with each strategy, and the zero-filled baseline) and evaluate against the references."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from recon_datasets import ellipsoid_recon_dataset

from diffens_auto import paths
from diffens_auto.imageio import read_image
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.run.degrade import degrade_entry
from diffens_auto.run.evaluate import evaluate_entry
from diffens_auto.run.plan_and_preprocess import plan_and_preprocess_entry
from diffens_auto.run.predict import predict_entry
from diffens_auto.run.train import train_entry
from diffens_auto.workflows.train import train

DATASET, PLANS, TASK = "Dataset903_DemoEllipses", "diffensPlans_tiny", "recon"
KSPACE = {"type": "kspace", "mask": "poisson", "acceleration": 4, "acs": 6, "slice_axis": 2}
QUICK = dict(plans_name=PLANS, num_epochs=1, iterations_per_epoch=2, echo=False, validate=False)


def _command(entry, monkeypatch, *argv) -> int:
    """Run a command's entry point with `argv`; its exit status (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", [entry.__name__, *map(str, argv)])
    try:
        entry()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def recon_run(tmp_path_factory):
    """Three 24^3 ellipsoid phantoms with a recon task: planned, preprocessed, three models trained, one held-out
    scan degraded into a bundle by diffens_degrade."""
    root = tmp_path_factory.mktemp("recon_end_to_end")
    with pytest.MonkeyPatch.context() as monkeypatch:
        raw = ellipsoid_recon_dataset(root, monkeypatch, 903, 4, kspace=KSPACE)
        spec = json.loads((raw / "dataset.json").read_text())
        spec["numTraining"] = 3
        held_out = root / "hr"
        held_out.mkdir()
        shutil.move(raw / "imagesTr" / "DemoEllipses_003_0000.nii.gz", held_out)   # never seen in training
        (raw / "dataset.json").write_text(json.dumps(spec))
        assert _command(plan_and_preprocess_entry, monkeypatch, "-d", 903, "-pl", "tiny", "-np", 1) == 0
        assert _command(train_entry, monkeypatch, 903, TASK, "2d_axial", "-p", PLANS, "--epochs", 1,
                        "--iterations_per_epoch", 2, "--no_val") == 0
        train(903, TASK, "2d_sagittal", **QUICK)
        train(903, TASK, "3d_ensembler", **QUICK)
        assert _command(degrade_entry, monkeypatch, "-i", held_out, "-o", root / "bundles", "-d", 903,
                        "-t", TASK) == 0
    return root


@pytest.fixture
def run_folders(recon_run, monkeypatch):
    """Point diffens_raw/preprocessed/results at the run's folders for one test; returns its root."""
    root = recon_run
    for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        monkeypatch.setenv(variable, str(root / variable))
    return root


def _psnr(reference: np.ndarray, output: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    mse = np.mean((output.astype(np.float64) - reference) ** 2)
    return 10 * np.log10((reference.max() - reference.min()) ** 2 / mse)


def test_predict_and_evaluate_through_the_commands(run_folders, monkeypatch):
    root = run_folders
    case = "DemoEllipses_003"
    assert sorted(p.name for p in (root / "bundles").iterdir()) == [f"{case}.npz", f"{case}_reference.nii.gz"]
    for configuration, sampling in (("2d_axial", ("--steps", 3, "--dc_steps", 4)), ("zero_filled", ())):
        out = root / configuration
        assert _command(predict_entry, monkeypatch, "-i", root / "bundles", "-o", out, "-d", 903, "-t", TASK,
                        "-c", configuration, *sampling, "--quiet") == 0
        summary = json.loads((out / "prediction_summary.json").read_text())
        assert (summary["done"], summary["failed"]) == (1, 0)
        assert "reference for evaluation, not an input" in summary["cases"][0]["message"]
    settings = json.loads((root / "2d_axial" / "prediction_settings.json").read_text())
    assert settings["dc_steps"] == 4 and settings["dc_gamma"] == 5.0 and settings["steps"] == 3
    # the references beside the bundles, under the predictions' names
    (root / "references").mkdir()
    shutil.copy(root / "bundles" / f"{case}_reference.nii.gz", root / "references" / f"{case}.nii.gz")
    reference, reference_props = read_image(root / "references" / f"{case}.nii.gz")
    for configuration in ("2d_axial", "zero_filled"):
        output, props = read_image(root / configuration / f"{case}.nii.gz")
        assert output.shape == reference.shape and np.isfinite(output).all() and output.min() >= 0
        assert np.allclose(props["direction"], reference_props["direction"])
        assert props["shape"] == reference_props["shape"]
        assert _command(evaluate_entry, monkeypatch, "-ref", root / "references", "-pred", root / configuration,
                        "-np", 1, "--no_mmd") == 0
        evaluation = json.loads((root / configuration / "evaluation.json").read_text())
        print(f"{configuration}: PSNR {_psnr(reference, output):.2f} dB")
        assert evaluation["mean"]["all"]["psnr"] == pytest.approx(_psnr(reference, output), abs=1e-3)


@pytest.mark.parametrize("configuration", ["average", "tpdm", "3d_ensembler"])
def test_every_strategy_reconstructs_a_bundle(run_folders, configuration, tmp_path):
    predictor = DiffensPredictor(steps=2, progress=False).initialize_from_trained_model(903, TASK, configuration)
    summary = predictor.predict_from_files(run_folders / "bundles", tmp_path)
    assert (summary["done"], summary["failed"]) == (1, 0), summary
    output, _ = read_image(tmp_path / "DemoEllipses_003.nii.gz")
    assert np.isfinite(output).all() and output.max() > 0


def test_adapting_through_the_command_saves_the_lora_and_refuses_flags_of_another_variant(run_folders, monkeypatch,
                                                                                         capsys):
    root = run_folders
    out = root / "adapted"
    assert _command(predict_entry, monkeypatch, "-i", root / "bundles", "-o", out, "-d", 903, "-t", TASK,
                    "-c", "3d_ensembler", "--steps", 3, "--adapt", "d3ip", "--adapt_steps", 1, "--adapt_slices", 2,
                    "--save_adapted", "--quiet") == 0
    summary = json.loads((out / "prediction_summary.json").read_text())
    assert summary["done"] == 1 and "2d_sagittal ran unadapted" in summary["cases"][0]["message"]
    saved = torch.load(out / "DemoEllipses_003_lora.pth", weights_only=True)
    assert set(saved) >= {"format", "2d_axial"} and "2d_sagittal" not in saved
    settings = json.loads((out / "prediction_settings.json").read_text())
    assert settings["adaptation"]["method"] == "d3ip" and settings["adaptation"]["slices"] == 2
    capsys.readouterr()
    assert _command(predict_entry, monkeypatch, "-i", root / "bundles", "-o", root / "refused", "-d", 903, "-t",
                    TASK, "-c", "2d_axial", "--adapt", "d3ip", "--tv_rho", 0.1, "--quiet") == 1
    error = capsys.readouterr().err
    assert "--tv_rho: not used by --adapt d3ip" in error and "Traceback" not in error
