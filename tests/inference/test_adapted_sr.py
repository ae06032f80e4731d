"""SR prediction with --adapt on the briefly trained demo models: every variant keeps the input exactly, every
expert adapts (the ensembler frozen), whole blocks, the recorded settings, resumption, LoRA files, a diverging case,
and the refusals."""
import json

import numpy as np
import pytest
import torch
from synthetic_images import blob, write_sitk

from diffens_auto.adaptation import PooledSlices
from diffens_auto.imageio import read_image
from diffens_auto.inference.adapted_recon import LORA_FORMAT
from diffens_auto.inference.model import PredictionSetupError
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.sampling_settings import AdaptationRequest
from diffens_auto.inference import adapted_sr
from diffens_auto.operators import AvgPoolSR, avgpool_downsample

QUICK = {"steps": 1, "slices": 1}
FACTOR = 4      # the demo's sr task


@pytest.fixture(scope="module")
def lowres_folder(tmp_path_factory):
    """Two low-resolution FLAIR inputs at the demo's 8 mm input spacing (the second one block shorter)."""
    folder = tmp_path_factory.mktemp("sr_adapt_inputs")
    for case, seed, shape in (("case_a", 1, (8, 8, 8)), ("case_b", 2, (8, 8, 7))):
        write_sitk(blob(shape, seed) * 4, folder / f"{case}_0003.nii.gz", spacing=(8.0, 8.0, 8.0))
    return folder


def _predictor(method="d3ip", overrides=QUICK, configuration="3d_ensembler", **request):
    predictor = DiffensPredictor(progress=False, steps=3, adaptation=AdaptationRequest(method, dict(overrides),
                                                                                       **request))
    return predictor.initialize_from_trained_model(900, "sr", configuration)


def _pools_back(output_path, input_path):
    output, lowres = read_image(output_path)[0], read_image(input_path)[0]
    pooled = avgpool_downsample(output.astype(np.float64), FACTOR)
    return np.abs(pooled - lowres).max() <= 1e-3 * max(1.0, float(np.abs(lowres).max()))


@pytest.mark.parametrize("method, configuration", [("d3ip", "3d_ensembler"), ("d3ip_meta", "tpdm"),
                                                   ("d3ip_mbir", "average"), ("ddip", "2d_axial")])
def test_every_variant_keeps_the_input_and_records_which_experts_adapted(
        trained_demo_folders, lowres_folder, tmp_path, monkeypatch, method, configuration):
    sampled, finish = [], adapted_sr.finish_case

    def recording(target_pp, case, *args):
        sampled.append((target_pp, case))
        return finish(target_pp, case, *args)
    monkeypatch.setattr(adapted_sr, "finish_case", recording)
    overrides = {"steps": 1} if method == "ddip" else QUICK
    summary = _predictor(method, overrides, configuration).predict_from_files(lowres_folder, tmp_path)
    assert (summary["done"], summary["failed"]) == (2, 0), summary
    for target_pp, case in sampled:     # the sampler's own last step keeps the measurement, before finish_case
        pooled = AvgPoolSR(FACTOR).A(torch.from_numpy(target_pp)[None, None].double())
        assert torch.allclose(pooled.float(), case.measurement.float(), atol=1e-4 * float(case.measurement.abs().max()))
    for case in ("case_a", "case_b"):
        assert _pools_back(tmp_path / f"{case}.nii.gz", lowres_folder / f"{case}_0003.nii.gz")
    adaptation = json.loads((tmp_path / "prediction_settings.json").read_text())["adaptation"]
    assert adaptation["method"] == method and adaptation["steps"] == 1
    expected = {"2d_axial"} if configuration == "2d_axial" else {"2d_axial", "2d_sagittal"}
    assert set(adaptation["adapted"]) == expected


def test_adaptation_changes_the_output_none_is_the_plain_prediction_and_the_experts_come_back_unchanged(
        trained_demo_folders, lowres_folder, tmp_path):
    plain = DiffensPredictor(progress=False, steps=3).initialize_from_trained_model(900, "sr", "3d_ensembler")
    plain.predict_from_files(lowres_folder, tmp_path / "plain")
    _predictor("none", {}).predict_from_files(lowres_folder, tmp_path / "none")
    adapted = _predictor("d3ip", {"steps": 2, "slices": 2, "lr": 1e-2})
    before = {name: {k: v.clone() for k, v in runner.expert.state_dict().items()}
              for name, runner in adapted.model.runners.items()}
    adapted.predict_from_files(lowres_folder, tmp_path / "d3ip")
    reference = read_image(tmp_path / "plain" / "case_a.nii.gz")[0]
    assert np.array_equal(reference, read_image(tmp_path / "none" / "case_a.nii.gz")[0])
    assert not np.array_equal(reference, read_image(tmp_path / "d3ip" / "case_a.nii.gz")[0])
    for name, runner in adapted.model.runners.items():
        after = runner.expert.state_dict()
        assert after.keys() == before[name].keys()          # the LoRA set is out again
        assert all(torch.equal(after[k], before[name][k]) for k in after)
    again = _predictor("d3ip", {"steps": 2, "slices": 2, "lr": 1e-2})
    again.predict_from_files(lowres_folder, tmp_path / "again")
    assert np.array_equal(read_image(tmp_path / "d3ip" / "case_a.nii.gz")[0],
                          read_image(tmp_path / "again" / "case_a.nii.gz")[0])     # seeded: reproducible


def test_each_expert_trains_on_whole_blocks_of_its_own_axis(trained_demo_folders, lowres_folder, tmp_path,
                                                              monkeypatch):
    seen = []
    loss = PooledSlices.loss

    def recording(self, x0, indices, **kwargs):
        seen.append((self.slice_axis, indices.tolist(), x0.shape[2 + self.slice_axis], self.pads[self.slice_axis][0]))
        return loss(self, x0, indices, **kwargs)
    monkeypatch.setattr(PooledSlices, "loss", recording)
    _predictor("d3ip", {"steps": 1, "slices": 2}).predict_from_files(lowres_folder, tmp_path)
    assert {axis for axis, _, _, _ in seen} == {0, 2}            # sagittal and axial experts
    for axis, indices, size, before in seen:
        assert size == len(indices) == 2 * FACTOR
        blocks = np.reshape(indices, (-1, FACTOR))
        # whole blocks of the measurement: each starts a block of the unpadded grid
        assert (np.diff(blocks, axis=1) == 1).all() and all((int(b) - before) % FACTOR == 0 for b in blocks[:, 0])


def test_saved_lora_weights_resume_and_refuse_other_settings(trained_demo_folders, lowres_folder, tmp_path):
    _predictor(save_adapted=True).predict_from_files(lowres_folder, tmp_path / "first")
    saved = torch.load(tmp_path / "first" / "case_a_lora.pth", weights_only=True)
    assert saved["format"] == LORA_FORMAT and {"2d_axial", "2d_sagittal"} <= set(saved)
    assert sum(v.numel() * 4 for k in ("2d_axial", "2d_sagittal") for v in saved[k].values()) < 400_000
    lora = tmp_path / "first" / "case_a_lora.pth"
    summary = _predictor(lora=lora).predict_from_files(lowres_folder, tmp_path / "second")
    assert summary["done"] == 2
    fresh, follow_up = (read_image(tmp_path / f / "case_a.nii.gz")[0] for f in ("first", "second"))
    assert not np.array_equal(fresh, follow_up)         # it started from the saved set, not a fresh one
    summary = _predictor(save_adapted=True).predict_from_files(lowres_folder, tmp_path / "first",
                                                               continue_prediction=True)
    assert [row["status"] for row in summary["cases"]] == ["skipped", "skipped"]
    with pytest.raises(PredictionSetupError, match="adaptation"):
        _predictor(overrides={"steps": 2, "slices": 1}, save_adapted=True).predict_from_files(
            lowres_folder, tmp_path / "first", continue_prediction=True)


def test_a_diverging_case_fails_alone_with_a_message(trained_demo_folders, lowres_folder, tmp_path, monkeypatch):
    loss, first = PooledSlices.loss, []

    def diverging(self, x0, indices, **kwargs):
        value = loss(self, x0, indices, **kwargs)
        first.append(first[0] if first else tuple(self.measurement.shape))    # case_a comes first, case_b is shorter
        return value * float("nan") if tuple(self.measurement.shape) == first[0] else value
    monkeypatch.setattr(PooledSlices, "loss", diverging)
    summary = _predictor().predict_from_files(lowres_folder, tmp_path)
    rows = {row["case"]: row for row in summary["cases"]}
    assert rows["case_a"]["status"] == "failed" and "diverged" in rows["case_a"]["message"]
    assert rows["case_b"]["status"] == "done" and (tmp_path / "case_b.nii.gz").is_file()
    assert not (tmp_path / "case_a.nii.gz").exists()


def test_requests_that_cannot_adapt_are_refused(trained_demo_folders, lowres_folder, tmp_path):
    with pytest.raises(PredictionSetupError, match="has no measurement to adapt to"):
        DiffensPredictor(progress=False, adaptation=AdaptationRequest("d3ip")).initialize_from_trained_model(
            900, "mt", "2d_axial")
    with pytest.raises(PredictionSetupError, match="--adapt ddip samples every block .* Fix: -c 2d_axial"):
        _predictor("ddip", {"steps": 1})
    with pytest.raises(PredictionSetupError, match="--tv_rho: not used by --adapt d3ip"):
        _predictor(overrides={"tv_rho": 0.1})
    with pytest.raises(PredictionSetupError, match="--dc_steps: --adapt d3ip on an SR task"):
        DiffensPredictor(progress=False, dc_steps=3, adaptation=AdaptationRequest("d3ip", QUICK)
                         ).initialize_from_trained_model(900, "sr", "2d_axial")
    with pytest.raises(PredictionSetupError, match="--dc_gamma / --dc_steps"):
        DiffensPredictor(progress=False, dc_gamma=2.0).initialize_from_trained_model(900, "sr", "2d_axial")
    gamma = DiffensPredictor(progress=False, dc_gamma=2.0, adaptation=AdaptationRequest("d3ip", QUICK))
    assert gamma.initialize_from_trained_model(900, "sr", "2d_axial").adapted.adaptation.dc_gamma == 2.0


def test_a_case_without_a_measurement_on_its_grid_is_refused_for_that_case(trained_demo_folders, lowres_folder,
                                                                            tmp_path):
    summary = DiffensPredictor(progress=False, steps=3, consistency=False,
                               adaptation=AdaptationRequest("d3ip", QUICK)).initialize_from_trained_model(
        900, "sr", "2d_axial").predict_from_files(lowres_folder, tmp_path)
    assert summary["failed"] == 2 and "no measurement on its sampling grid" in summary["cases"][0]["message"]
