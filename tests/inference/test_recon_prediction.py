"""Recon prediction: bundles of an oblique, permuted, flipped scan through the composed operator, the DDS data
consistency, the whole prediction path with an oracle prior, the zero-filled baseline and a batch with bad bundles.

The model is a TrainedModel made by hand around a denoiser (an oracle, or one whose x0 estimate is 0): every test
runs the real code path from the bundle files to the written images, without training a network.
"""
import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic_images import blob, write_sitk
from tiny_plans import RECON_TASK, tiny_recon_plans

from diffens_auto import paths
from diffens_auto.diffusion import DDSDataConsistency
from diffens_auto.imageio import read_image, read_kspace_bundle
from diffens_auto.inference.degrade_inputs import degrade_kspace_case
from diffens_auto.inference.model import PredictionSetupError, TrainedModel
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.recon_prediction import (ZeroFilledReconstruction, _Interior, bundle_operator,
                                                     find_bundle_cases, prepare_recon_case, recon_pads,
                                                     zero_filled_from_files)
from diffens_auto.run.predict import predict_entry

DEGRADATION = {"type": "kspace", "mask": "poisson", "acceleration": 3, "acs": 4, "slice_axis": 2, "noise_std": 0.0,
               "mask_per_slice": False}
DATASET = "Dataset001_TinyRecon"
FILE_SHAPE = (15, 12, 10)          # odd sizes, not multiples of the networks' 4: the case is padded


def _oblique_permuted_flipped():
    """Axis 0 -> P, 1 -> I, 2 -> R (LPS), rotated by 20 degrees: reading reorders, flips and keeps the obliquity."""
    base = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return tuple((rotation @ base).flatten())


def _scan(path, seed, spacing=(1.0, 1.0, 1.0)):
    write_sitk(blob(FILE_SHAPE, seed), path, spacing=spacing, origin=(-12.5, 31.0, 7.25),
               direction=_oblique_permuted_flipped())


@pytest.fixture
def bundles(tmp_path):
    """Two oblique scans' bundles CASE.npz and their references CASE_reference.nii.gz, as diffens_degrade writes."""
    folder = tmp_path / "bundles"
    folder.mkdir()
    for case, seed in (("case_a", 1), ("case_b", 2)):
        _scan(tmp_path / f"{case}.nii.gz", seed)
        assert degrade_kspace_case(case, tmp_path / f"{case}.nii.gz", folder, DEGRADATION, seed)["status"] == "written"
    return folder


@pytest.fixture
def plans():
    return tiny_recon_plans(degradation=DEGRADATION)


class Oracle:
    """The true noise of the current x_t: eps = (x_t - sqrt(ab) x_true) / sqrt(1 - ab)."""

    def __init__(self, x_true, schedule):
        self.x_true, self.schedule = x_true, schedule

    def __call__(self, y_t, condition, t):
        alpha_bar = torch.as_tensor(float(self.schedule.alpha_bar[int(t)]), dtype=y_t.dtype)
        return (y_t - alpha_bar.sqrt() * self.x_true.to(y_t)) / (1 - alpha_bar).sqrt()


class ZeroEstimate:
    """A prior whose x0 estimate is 0 at every step: eps = y_t / sqrt(1 - ab)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, y_t, condition, t):
        assert condition.shape[1] == 0 and condition.shape[2:] == y_t.shape[2:]
        return y_t / (1 - torch.as_tensor(float(self.schedule.alpha_bar[int(t)]), dtype=y_t.dtype)).sqrt()


def _predictor(plans, strategy=None, **settings) -> DiffensPredictor:
    """A DiffensPredictor whose recon 'model' is `strategy` (set later when None)."""
    model = TrainedModel(DATASET, plans["plans_name"], plans, None, RECON_TASK, "oracle", 0, strategy, {}, None, [])
    return DiffensPredictor(progress=False, **settings).use_model(model)


def _psnr(reference, output) -> float:
    reference = reference.astype(np.float64)
    data_range = reference.max() - reference.min()
    return 10 * np.log10(data_range ** 2 / np.mean((output.astype(np.float64) - reference) ** 2))


def test_the_bundle_operator_is_adjoint_and_gives_the_bundle_its_kspace(bundles):
    bundle = read_kspace_bundle(bundles / "case_a.npz")
    assert bundle.reorientation["permutation"] != [0, 1, 2] and any(bundle.reorientation["flips"])
    op = bundle_operator(bundle)
    shape = tuple(bundle.props["shape"])
    g = torch.Generator().manual_seed(0)
    u = torch.randn((1, 1) + shape, generator=g, dtype=torch.complex128)
    k = torch.randn((1, 1) + FILE_SHAPE, generator=g, dtype=torch.complex128)
    left, right = torch.sum(op.A(u).conj() * k), torch.sum(u.conj() * op.AH(k))
    assert abs(left - right) <= 1e-10 * abs(left)
    reference, _ = read_image(bundles / "case_a_reference.nii.gz")
    again = op.A(torch.from_numpy(np.ascontiguousarray(reference, np.float64)))
    assert np.abs(again.numpy() - bundle.kspace).max() <= 1e-5 * np.abs(bundle.kspace).max()


def test_a_huge_gamma_is_hard_data_consistency_in_the_file_order(bundles, plans):
    bundle = read_kspace_bundle(bundles / "case_b.npz")
    case = prepare_recon_case(bundle, plans, RECON_TASK)
    y = case.measurement.to(torch.complex128)
    x0_hat = torch.randn((1, 1) + case.shape, generator=torch.Generator().manual_seed(1), dtype=torch.complex128)
    hard = case.operator.project(x0_hat, y)
    soft = DDSDataConsistency(case.operator, y, gamma=1e6, cg_steps=20)(x0_hat, 0)
    file_soft, file_hard = case.operator.to_file_order(soft), case.operator.to_file_order(hard)
    assert float((file_soft - file_hard).abs().max() / file_hard.abs().max()) <= 1e-5
    # the measured points are the bundle's own array, in its own axis order
    sampled = np.broadcast_to(bundle.mask, FILE_SHAPE)
    measured = case.operator.A(soft)[0, 0].numpy() * case.params["half_range"]
    assert np.abs(measured[sampled] - bundle.kspace[sampled]).max() <= 1e-5 * np.abs(bundle.kspace).max()
    # as prediction runs it: on the padded case, the padding left as the prior made it
    pads = recon_pads(case.shape, plans["crop_multiples"])
    padded = F.pad(x0_hat, [p for pair in reversed(pads) for p in pair], value=0.5)
    inside = DDSDataConsistency(_Interior(case.operator, pads), y, gamma=1e6, cg_steps=20)(padded, 0)
    region = (..., *[slice(a, a + n) for (a, _), n in zip(pads, case.shape)])
    assert torch.equal(inside[region], soft)
    outside = torch.ones_like(inside, dtype=torch.bool)
    outside[region] = False
    assert bool((inside[outside] == 0.5).all()) and outside.any()


def test_an_oracle_prior_gives_back_the_reference_through_the_prediction_path(bundles, plans, tmp_path):
    predictor = _predictor(plans)
    bundle = read_kspace_bundle(bundles / "case_a.npz")
    case = prepare_recon_case(bundle, plans, RECON_TASK)
    reference, _ = read_image(bundles / "case_a_reference.nii.gz")
    pads = recon_pads(case.shape, plans["crop_multiples"])
    assert any(a or b for a, b in pads)
    x_true = torch.from_numpy(np.ascontiguousarray(reference, np.float32) / case.params["half_range"])[None, None]
    predictor.model.strategy = Oracle(F.pad(x_true, [p for pair in reversed(pads) for p in pair]),
                                      predictor.sampler.schedule)
    summary = predictor.predict_from_files(bundles, tmp_path / "out", num_parts=1)
    assert summary["done"] == 2 and summary["failed"] == 0
    row = next(r for r in summary["cases"] if r["case"] == "case_a")
    assert "case_a_reference.nii.gz beside the bundle ignored" in row["message"]
    written = nib.load(str(tmp_path / "out" / "case_a.nii.gz"))
    np.testing.assert_allclose(written.affine, bundle.affine, atol=1e-4)
    output, _ = read_image(tmp_path / "out" / "case_a.nii.gz")
    psnr = _psnr(reference, output)
    print(f"oracle PSNR {psnr:.1f} dB")
    assert psnr >= 80
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert settings["dc_gamma"] == 5.0 and settings["dc_steps"] == 5 and settings["recon"]["start_timestep"] == 980
    assert "eta_convention='dds'" in settings["sampler"] and settings["steps"] == 10


def test_gamma_and_cg_steps_come_from_the_plans_or_the_flags(bundles, plans, tmp_path):
    zero_filled = zero_filled_from_files_for(plans, bundles, tmp_path)
    predictor = _predictor(plans, dc_gamma=0.0, steps=3)
    predictor.model.strategy = ZeroEstimate(predictor.sampler.schedule)
    predictor.predict_from_files(bundles, tmp_path / "gamma0")
    output, _ = read_image(tmp_path / "gamma0" / "case_a.nii.gz")
    assert np.abs(output).max() <= 1e-5 * zero_filled.max()     # no data consistency: the prior's x0 of 0
    predictor = _predictor(plans, steps=3)
    predictor.model.strategy = ZeroEstimate(predictor.sampler.schedule)
    predictor.predict_from_files(bundles, tmp_path / "plans")
    output, _ = read_image(tmp_path / "plans" / "case_a.nii.gz")
    # x0 = 0 and gamma 5: the last estimate is (5 Re(A^H A) + I)^-1 5 Re(A^H y), between 5/6 and 5/7 of Re(A^+ y)
    assert 0.5 * zero_filled.max() < output.max() <= zero_filled.max()
    with pytest.raises(PredictionSetupError, match="--dc_gamma -1"):
        DiffensPredictor(dc_gamma=-1)
    with pytest.raises(PredictionSetupError, match="--no_consistency"):
        _predictor(plans, consistency=False)
    with pytest.raises(PredictionSetupError, match=r"eta 1.5: DDS's eta"):
        _predictor(plans, eta=1.5)


def zero_filled_from_files_for(plans, bundles, tmp_path):
    """|A^+ y| of case_a written by the zero-filled baseline, read back."""
    (tmp_path / "preprocessed" / DATASET).mkdir(parents=True, exist_ok=True)
    (tmp_path / "preprocessed" / DATASET / f"{plans['plans_name']}.json").write_text(json.dumps(plans))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(paths.PREPROCESSED_VARIABLE, str(tmp_path / "preprocessed"))
        monkeypatch.setenv(paths.RESULTS_VARIABLE, str(tmp_path / "results"))
        zero_filled_from_files(DATASET, RECON_TASK, bundles, tmp_path / "zero_filled", progress=False)
    return read_image(tmp_path / "zero_filled" / "case_a.nii.gz")[0]


def test_the_zero_filled_baseline_is_the_magnitude_of_a_pinv_y_on_the_bundles_grid(bundles, plans, tmp_path):
    output = zero_filled_from_files_for(plans, bundles, tmp_path)
    bundle = read_kspace_bundle(bundles / "case_a.npz")
    op = bundle_operator(bundle)
    expected = op.pinv(torch.from_numpy(bundle.kspace.astype(np.complex128))).abs().numpy()
    assert np.abs(output - expected).max() <= 1e-5 * expected.max()
    np.testing.assert_allclose(nib.load(str(tmp_path / "zero_filled" / "case_a.nii.gz")).affine, bundle.affine,
                               atol=1e-4)
    settings = json.loads((tmp_path / "zero_filled" / "prediction_settings.json").read_text())
    assert settings["configuration"] == "zero_filled" and settings["checkpoints"] == []


def test_a_spacing_off_the_target_is_warned_about_only_with_the_tolerance_in_the_plans(plans, tmp_path):
    _scan(tmp_path / "coarse.nii.gz", 3, spacing=(1.0, 1.0, 1.5))
    degrade_kspace_case("coarse", tmp_path / "coarse.nii.gz", tmp_path, DEGRADATION, 0)
    bundle = read_kspace_bundle(tmp_path / "coarse.npz")
    note = prepare_recon_case(bundle, plans, RECON_TASK).notes
    assert len(note) == 1 and "50 % off the target spacing" in note[0] and "recon_spacing_tolerance 0.25" in note[0]
    plans["inference"]["recon_spacing_tolerance"] = 0.6
    assert prepare_recon_case(bundle, plans, RECON_TASK).notes == []
    del plans["inference"]["recon_spacing_tolerance"]
    assert prepare_recon_case(bundle, plans, RECON_TASK).notes == []


def _malformed(path, **changes):
    arrays = dict(np.load(path))
    arrays.update(changes)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})


MALFORMED = {   # every kind the reader refuses, each in a batch of its own (tests/imageio has all the messages)
    "missing key": ({"noise_std": None}, "key 'noise_std'"),
    "wrong dtype": ({"mask": np.ones((15, 12, 1), np.uint8)}, "key 'mask'"),
    "wrong shape": ({"kspace": np.ones((2, 15, 12, 10), np.complex64)}, "key 'kspace'"),
    "bad affine": ({"affine": np.eye(3)}, "key 'affine'"),
    "bad fft_axes": ({"fft_axes": np.array([0, 3])}, "key 'fft_axes'"),
    "negative noise_std": ({"noise_std": np.float64(-1.0)}, "key 'noise_std'"),
    "extra key": ({"sensitivities": np.ones((2, 15, 12, 10))}, "key 'sensitivities'"),
}


@pytest.mark.parametrize("changes, key", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_bundle_fails_alone_naming_file_and_key(bundles, plans, tmp_path, changes, key):
    _malformed(bundles / "case_b.npz", **changes)
    predictor = _predictor(plans)
    predictor.model.strategy = ZeroEstimate(predictor.sampler.schedule)
    summary = predictor.predict_from_files(bundles, tmp_path / "out")
    rows = {r["case"]: r for r in summary["cases"]}
    assert rows["case_a"]["status"] == "done" and (tmp_path / "out" / "case_a.nii.gz").is_file()
    assert rows["case_b"]["status"] == "failed" and not (tmp_path / "out" / "case_b.nii.gz").exists()
    message = rows["case_b"]["message"]
    assert message.startswith("MeasurementBundleError") and str(bundles / "case_b.npz") in message and key in message


def test_the_command_writes_the_good_cases_reports_the_bad_one_and_exits_1(bundles, plans, tmp_path, monkeypatch,
                                                                          capsys):
    (bundles / "notes.txt").write_text("not an input")
    np.save(bundles / "case_c.npz", np.zeros(3))       # a single .npy array under a bundle's name
    (bundles / "case_c.npz.npy").rename(bundles / "case_c.npz")
    (tmp_path / "preprocessed" / DATASET).mkdir(parents=True)
    (tmp_path / "preprocessed" / DATASET / f"{plans['plans_name']}.json").write_text(json.dumps(plans))
    monkeypatch.setenv(paths.PREPROCESSED_VARIABLE, str(tmp_path / "preprocessed"))
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(tmp_path / "results"))
    monkeypatch.setattr(sys, "argv", ["diffens_predict", "-i", str(bundles), "-o", str(tmp_path / "out"), "-d", "1",
                                      "-t", RECON_TASK, "-c", "zero_filled", "--quiet"])
    with pytest.raises(SystemExit) as exit_status:
        predict_entry()
    assert exit_status.value.code == 1
    err = capsys.readouterr().err
    assert f"FAILED case_c: MeasurementBundleError: Cannot read measurement bundle '{bundles / 'case_c.npz'}'" in err
    assert "NOTE case_a: case_a_reference.nii.gz beside the bundle ignored" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["case_a.nii.gz", "case_b.nii.gz"]
    summary = json.loads((tmp_path / "out" / "prediction_summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (2, 1)
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert settings["ignored_files"] == ["notes.txt"]


def test_continuing_keeps_finished_cases_and_refuses_other_dc_settings(bundles, plans, tmp_path):
    predictor = _predictor(plans)
    predictor.model.strategy = ZeroEstimate(predictor.sampler.schedule)
    predictor.predict_from_files(bundles, tmp_path / "out")
    again = predictor.predict_from_files(bundles, tmp_path / "out", continue_prediction=True)
    assert again["skipped"] == 2
    other = _predictor(plans, dc_steps=2)
    other.model.strategy = ZeroEstimate(other.sampler.schedule)
    with pytest.raises(PredictionSetupError, match="dc_steps: 5 then, 2 now"):
        other.predict_from_files(bundles, tmp_path / "out", continue_prediction=True)


def test_inputs_and_requests_that_are_refused(bundles, plans, tmp_path):
    cases, ignored = find_bundle_cases(bundles)
    assert [c.case_id for c in cases] == ["case_a", "case_b"] and ignored == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictionSetupError, match="no measurement bundles"):
        find_bundle_cases(tmp_path / "empty")
    with pytest.raises(PredictionSetupError, match="input folder not found"):
        find_bundle_cases(tmp_path / "missing")
    sr = tiny_recon_plans()
    sr["tasks"][RECON_TASK]["degradation"] = {"type": "avgpool", "factor": [2, 2, 2]}
    model = TrainedModel(DATASET, sr["plans_name"], sr, None, RECON_TASK, "x", 0, None, {}, None, [])
    with pytest.raises(PredictionSetupError, match="--dc_gamma / --dc_steps: task 'recon' has no k-space"):
        DiffensPredictor(dc_steps=3).use_model(model)
    with pytest.raises(PredictionSetupError, match="-c zero_filled: the zero-filled baseline needs a recon task"):
        ZeroFilledReconstruction(DATASET, sr, RECON_TASK)


def test_the_zero_filled_baseline_without_any_plans_names_the_fix(bundles, tmp_path, monkeypatch):
    for variable in (paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    with pytest.raises(PredictionSetupError, match="-t recon: no trained model and No plans in"):
        zero_filled_from_files(DATASET, RECON_TASK, bundles, tmp_path / "out", progress=False)


class NegativeEstimate:
    """A prior whose x0 estimate is -1 everywhere: eps = (y_t + sqrt(ab)) / sqrt(1 - ab)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, y_t, condition, t):
        alpha_bar = torch.as_tensor(float(self.schedule.alpha_bar[int(t)]), dtype=y_t.dtype)
        return (y_t + alpha_bar.sqrt()) / (1 - alpha_bar).sqrt()


def test_negative_x0_estimates_are_clipped_to_zero_before_the_magnitude(bundles, plans, tmp_path):
    # a magnitude object is never negative: |x| of an unclipped -1 estimate would be a bright 1 everywhere
    predictor = _predictor(plans, dc_gamma=0.0)
    predictor.model.strategy = NegativeEstimate(predictor.sampler.schedule)
    summary = predictor.predict_from_files(bundles, tmp_path / "out", num_parts=1)
    assert summary["done"] == 2
    output, _ = read_image(tmp_path / "out" / "case_a.nii.gz")
    assert np.abs(output).max() == 0.0


def test_start_timestep_moves_dds_start_and_is_recorded(bundles, plans, tmp_path):
    predictor = _predictor(plans, start_timestep=500)
    predictor.model.strategy = ZeroEstimate(predictor.sampler.schedule)
    assert predictor.predict_from_files(bundles, tmp_path / "out", num_parts=1)["done"] == 2
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert settings["recon"]["start_timestep"] == 500


def test_the_zero_filled_command_refuses_model_and_sampling_flags(bundles, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["diffens_predict", "-i", str(bundles), "-o", str(tmp_path / "out"), "-d", "1",
                                      "-t", RECON_TASK, "-c", "zero_filled", "--dc_gamma", "3", "--steps", "5"])
    with pytest.raises(SystemExit) as exit_status:
        predict_entry()
    assert exit_status.value.code == 1
    err = capsys.readouterr().err
    assert "-c zero_filled: --steps --dc_gamma" in err and "Fix: leave them out" in err
    assert not (tmp_path / "out").exists()


def test_a_huge_gamma_on_a_real_estimate_meets_the_measurement_in_the_file_order(bundles, plans):
    # prediction hands DDS a real x0 estimate: the real normal equations must meet y on the sampled points too
    bundle = read_kspace_bundle(bundles / "case_b.npz")
    case = prepare_recon_case(bundle, plans, RECON_TASK)
    y = case.measurement.to(torch.complex128)
    x0_hat = torch.randn((1, 1) + case.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    soft = DDSDataConsistency(case.operator, y, gamma=1e6, cg_steps=30)(x0_hat, 0)
    assert not soft.is_complex()
    sampled = torch.from_numpy(np.broadcast_to(bundle.mask, FILE_SHAPE).copy())
    measured = case.operator.A(soft)[0, 0]
    # a real image's k-space is Hermitian: where y is (as here) the k-space of a real object the real solution
    # reproduces it on the sampled points
    assert float((measured[sampled] - y[0, 0][sampled]).abs().max() / y.abs().max()) <= 1e-5
