"""Validation after training: the fold's validation cases predicted, written and scored."""
import json
import os
import subprocess
import sys

import numpy as np

from diffens_auto.evaluation import psnr, ssim3d
from diffens_auto.imageio import read_image
from diffens_auto.workflows.validation import validate_model


def test_validation_writes_predictions_on_the_reference_grid_and_their_scores(trained_demo_folders, tmp_path):
    summary = validate_model(900, "sr", "2d_axial", 0, steps=2, progress=False)
    folder = trained_demo_folders.results / "Dataset900_DemoBrain" / "sr" / "2d_axial__diffensPlans_tiny" / \
        "fold_0" / "validation"
    assert json.loads((folder / "summary.json").read_text()) == json.loads(json.dumps(summary))
    splits = json.loads((trained_demo_folders.preprocessed / "Dataset900_DemoBrain" / "splits_final.json").read_text())
    assert [r["case"] for r in summary["cases"]] == sorted(splits[0]["val"])
    for row in summary["cases"]:
        assert row["status"] == "done", row["message"]
        reference, reference_props = read_image(
            trained_demo_folders.raw / "Dataset900_DemoBrain" / "imagesTr" / f"{row['case']}_0003.nii.gz")
        prediction, prediction_props = read_image(folder / f"{row['case']}.nii.gz")
        assert prediction.shape == reference.shape
        assert np.allclose(prediction_props["origin"], reference_props["origin"], atol=1e-4)
        assert np.isclose(row["psnr"], psnr(reference, prediction), atol=1e-4)
        assert np.isclose(row["ssim"], ssim3d(reference, prediction), atol=1e-6)
    assert summary["steps"] == 2 and set(summary["mean"]) == {"psnr", "ssim", "mae", "psnr_foreground"}


def test_diffens_train_val_only_validates(trained_demo, tmp_path):
    env = {**os.environ, **{k: str(v) for k, v in trained_demo.folders.items()}, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "diffens_auto.run.train", "900", "mt", "2d_axial", "--val",
                             "--val_steps", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Validation (1 cases, 2 steps)" in result.stdout and "Trained model" not in result.stdout
    summary = trained_demo.results / "Dataset900_DemoBrain" / "mt" / "2d_axial__diffensPlans_tiny" / "fold_0" / \
        "validation" / "summary.json"
    assert json.loads(summary.read_text())["cases"][0]["status"] == "done"
