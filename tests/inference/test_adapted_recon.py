"""Recon prediction with --adapt: every variant through the prediction path (an untrained tiny prior, real bundles),
the recorded settings, resumption, the LoRA files, the separable expert, a diverging case, and the refusals."""
import json

import numpy as np
import pytest
import torch
from synthetic_images import blob, write_sitk
from tiny_plans import RECON_TASK, tiny_recon_plans

from diffens_auto.adaptation import KSpaceSlices
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.diffusion.strategies import SingleExpert, build_strategy
from diffens_auto.imageio import read_image
from diffens_auto.inference.adapted_recon import LORA_FORMAT
from diffens_auto.inference.degrade_inputs import degrade_kspace_case
from diffens_auto.inference.model import PredictionSetupError, TrainedModel
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.sampling_settings import AdaptationRequest
from diffens_auto.networks import build_expert
from diffens_auto.planning import network_for_task

DEGRADATION = {"type": "kspace", "mask": "poisson", "acceleration": 3, "acs": 4, "slice_axis": 2, "noise_std": 0.0,
               "mask_per_slice": True}
QUICK = {"steps": 2, "slices": 2}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two scans' bundles (per-slice masks along Z; case_b one slice shorter)."""
    root = tmp_path_factory.mktemp("adapted_bundles")
    folder = root / "bundles"
    folder.mkdir()
    for case, seed, shape in (("case_a", 1, (14, 12, 8)), ("case_b", 2, (14, 12, 7))):
        write_sitk(blob(shape, seed), root / f"{case}.nii.gz", spacing=(1.0, 1.0, 1.0))
        assert degrade_kspace_case(case, root / f"{case}.nii.gz", folder, DEGRADATION, seed)["status"] == "written"
        (folder / f"{case}_reference.nii.gz").unlink()
    return folder


def _model(configuration="2d_axial", names=("2d_axial",)):
    plans = tiny_recon_plans(degradation=DEGRADATION)
    runners = {}
    for i, name in enumerate(names):
        torch.manual_seed(i)
        network = network_for_task(plans, name, RECON_TASK)
        runners[name] = ExpertRunner.from_network(build_expert(network).eval(), network,
                                                  plans["configurations"][name]["slice_axis"], 4, name=name)
    strategy = SingleExpert(runners[names[0]]) if len(names) == 1 else build_strategy(configuration, runners)
    return TrainedModel("Dataset001_TinyRecon", plans["plans_name"], plans, None, RECON_TASK, configuration, 0,
                        strategy, runners, None, [])


def _predict(bundles, out, method="d3ip", overrides=QUICK, model=None, continue_prediction=False, **request):
    predictor = DiffensPredictor(progress=False, steps=3, adaptation=AdaptationRequest(method, dict(overrides),
                                                                                       **request))
    predictor.use_model(model or _model())
    return predictor.predict_from_files(bundles, out, continue_prediction)


@pytest.mark.parametrize("method", ["d3ip", "d3ip_mbir", "d3ip_meta", "ddip"])
def test_every_variant_writes_every_case_and_records_its_settings(bundles, tmp_path, method):
    overrides = {"steps": 1} if method == "ddip" else QUICK
    summary = _predict(bundles, tmp_path, method, overrides)
    assert (summary["done"], summary["failed"]) == (2, 0), summary
    for case in ("case_a", "case_b"):
        output, props = read_image(tmp_path / f"{case}.nii.gz")
        assert np.isfinite(output).all() and output.min() >= 0 and props["shape"] == list(output.shape)
    adaptation = json.loads((tmp_path / "prediction_settings.json").read_text())["adaptation"]
    assert adaptation["method"] == method and adaptation["steps"] == overrides["steps"]
    assert adaptation["dc_gamma"] == 5.0 and adaptation["dc_steps"] == 5      # DDS's, from the dds section


def test_adaptation_changes_the_output_and_none_is_dds(bundles, tmp_path):
    dds = DiffensPredictor(progress=False, steps=3).use_model(_model())
    dds.predict_from_files(bundles, tmp_path / "dds")
    _predict(bundles, tmp_path / "none", "none", {})
    _predict(bundles, tmp_path / "d3ip", "d3ip", {"steps": 3, "slices": 3, "lr": 1e-2})
    plain = read_image(tmp_path / "dds" / "case_a.nii.gz")[0]
    assert np.array_equal(plain, read_image(tmp_path / "none" / "case_a.nii.gz")[0])
    assert not np.array_equal(plain, read_image(tmp_path / "d3ip" / "case_a.nii.gz")[0])


def test_saved_lora_weights_load_with_weights_only_and_start_a_follow_up(bundles, tmp_path):
    _predict(bundles, tmp_path / "first", save_adapted=True)
    saved = torch.load(tmp_path / "first" / "case_a_lora.pth", weights_only=True)
    assert saved["format"] == LORA_FORMAT and saved["lora_rank"] == 4
    weights = saved["2d_axial"]
    assert weights and all(k.endswith((".down", ".up")) for k in weights)
    assert sum(v.numel() * 4 for v in weights.values()) < 200_000         # kilobytes, not a network
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if k.endswith(".up"))   # it moved
    lora = tmp_path / "first" / "case_a_lora.pth"
    summary = _predict(bundles, tmp_path / "second", lora=lora)
    assert summary["done"] == 2
    recorded = json.loads((tmp_path / "second" / "prediction_settings.json").read_text())["adaptation"]["lora"]
    assert recorded["path"] == str(lora) and len(recorded["sha256"]) == 64


def test_an_adapted_run_resumes_and_refuses_other_adaptation_settings(bundles, tmp_path):
    _predict(bundles, tmp_path)
    summary = _predict(bundles, tmp_path, continue_prediction=True)
    assert [row["status"] for row in summary["cases"]] == ["skipped", "skipped"]
    with pytest.raises(PredictionSetupError, match="adaptation"):
        _predict(bundles, tmp_path, overrides={**QUICK, "steps": 3}, continue_prediction=True)


def test_a_diverging_case_fails_alone_with_a_message(bundles, tmp_path, monkeypatch):
    loss = KSpaceSlices.loss

    def diverging(self, x0, indices, **kwargs):
        value = loss(self, x0, indices, **kwargs)
        return value * float("nan") if self.measurement.shape[-1] == 8 else value      # case_a: 8 slices
    monkeypatch.setattr(KSpaceSlices, "loss", diverging)
    summary = _predict(bundles, tmp_path)
    rows = {row["case"]: row for row in summary["cases"]}
    assert rows["case_a"]["status"] == "failed" and "diverged" in rows["case_a"]["message"]
    assert rows["case_b"]["status"] == "done" and (tmp_path / "case_b.nii.gz").is_file()
    assert not (tmp_path / "case_a.nii.gz").exists()


def test_only_the_separable_expert_adapts_and_a_model_without_it_is_refused(bundles, tmp_path):
    both = _model("average", ("2d_axial", "2d_sagittal"))
    summary = _predict(bundles, tmp_path / "average", model=both)
    assert summary["done"] == 2
    assert all("2d_sagittal ran unadapted" in row["message"] for row in summary["cases"])
    summary = _predict(bundles, tmp_path / "sagittal", model=_model("2d_sagittal", ("2d_sagittal",)))
    assert summary["failed"] == 2
    assert "no expert of this model slices that way" in summary["cases"][0]["message"]
    summary = _predict(bundles, tmp_path / "ddip", "ddip", {"steps": 1}, model=both)
    assert summary["failed"] == 2 and "-c 2d_axial" in summary["cases"][0]["message"]


def test_requests_that_cannot_adapt_are_refused_before_any_case(bundles, tmp_path):
    with pytest.raises(PredictionSetupError, match="--tv_rho: not used by --adapt d3ip"):
        _predict(bundles, tmp_path, overrides={"tv_rho": 0.1})
    with pytest.raises(PredictionSetupError, match="--save_adapted / --lora: they need an adapted prediction"):
        AdaptationRequest("none", save_adapted=True)
    with pytest.raises(PredictionSetupError, match="--lora .*not found"):
        AdaptationRequest("d3ip", lora=tmp_path / "missing.pth")
