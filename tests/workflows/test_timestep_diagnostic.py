"""Validation's per-timestep diagnostic: its files, and where the trivial and an oracle predictor's curves lie."""
import json

import numpy as np
import torch

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.inference.model import load_trained_model
from diffens_auto.workflows.timestep_diagnostic import TRIVIAL, case_sample, timestep_diagnostic
from diffens_auto.workflows.validation import validate_model


def test_validation_writes_the_diagnostic_of_the_ensembler_and_of_its_experts(trained_demo_folders):
    summary = validate_model(900, "sr", "3d_ensembler", 0, steps=2, progress=False)
    folder = trained_demo_folders.results / "Dataset900_DemoBrain" / "sr" / "3d_ensembler__diffensPlans_tiny" / \
        "fold_0" / "validation"
    assert summary["timestep_diagnostic"] == "timestep_diagnostic.json"
    diagnostic = json.loads((folder / "timestep_diagnostic.json").read_text())
    assert (folder / "timestep_diagnostic.png").stat().st_size > 0
    assert set(diagnostic["curves"]) == {"3d_ensembler", "2d_axial", "2d_sagittal", "tpdm", "average", TRIVIAL}
    assert diagnostic["timesteps"] == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    trivial = diagnostic["curves"][TRIVIAL]
    # x0 = 0 is the same estimate at every t; its implied eps gets worse as the signal grows (small t)
    assert np.ptp(trivial["x0_psnr"]) < 1e-9
    assert all(a > b for a, b in zip(trivial["eps_mse"], trivial["eps_mse"][1:]))
    for curve in diagnostic["curves"].values():
        assert len(curve["x0_psnr"]) == len(curve["eps_mse"]) == 10


def test_an_oracle_denoiser_is_exact_at_every_timestep(trained_demo_folders):
    model = load_trained_model(900, "sr", "2d_axial", 0)
    data_folder = trained_demo_folders.preprocessed / "Dataset900_DemoBrain" / model.plans["data_identifier"]
    case = "DemoBrain_000"
    y0, _, _, _, _ = case_sample(data_folder, case, model.plans, "sr")
    alpha_bar = NoiseSchedule.from_plans(model.plans["diffusion"]).alpha_bar.float()

    def oracle(y_t, condition, t):       # the exact output of what the model predicts (v for SR tasks)
        eps = (y_t - alpha_bar[t].sqrt() * y0) / (1 - alpha_bar[t]).sqrt()
        if model.task_plans.get("prediction", "epsilon") == "v":
            return alpha_bar[t].sqrt() * eps - (1 - alpha_bar[t]).sqrt() * y0
        return eps
    model.strategy = oracle
    curves = timestep_diagnostic(model, data_folder, [case])["curves"]
    assert max(curves["2d_axial"]["eps_mse"]) < 1e-6
    assert all(v is None or v > 60 for v in curves["2d_axial"]["x0_psnr"])
    trivial = curves[TRIVIAL]["x0_psnr"][0]
    assert all(v is None or v > trivial + 20 for v in curves["2d_axial"]["x0_psnr"])
    assert torch.isfinite(y0).all()
