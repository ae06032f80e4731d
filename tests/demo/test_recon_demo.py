"""diffens_demo --recon --smoke: the whole recon demo in one call, its table and files, a re-run that resumes, and
priors of one dataset reconstructing another dataset's bundles."""
import json
import sys
from dataclasses import replace

import numpy as np
import pytest

from diffens_auto import paths
from diffens_auto.demo.recon import (BRAIN_ID, DATASET_NAMES, ELLIPSES_ID, METHODS, REAL_CASE, SMOKE, TASK,
                                     held_out_indices, real_scan_file, run_recon_demo)
from diffens_auto.demo.recon_report import format_recon_table
from diffens_auto.imageio import read_image, read_kspace_bundle
from diffens_auto.inference.recon_prediction import prepare_recon_case, zero_filled_from_files, zero_filled_magnitude
from diffens_auto.planning.plans_file import load_plans

VARIABLES = (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke recon demo, run once, then once more in the same folder; (work folder, first and second summary)."""
    work = tmp_path_factory.mktemp("recon_demo") / "demo"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable in VARIABLES:   # restored afterwards: the demo points them at its own folders
            monkeypatch.setenv(variable, "")
        monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
        first = run_recon_demo(work, setting="smoke", num_processes=1, verbose=False)
        mtimes = {p: p.stat().st_mtime_ns for p in (work / "predictions").rglob("*.nii.gz")}
        second = run_recon_demo(work, setting="smoke", num_processes=1, verbose=False)
        assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes      # nothing predicted again
    return work, first, second


@pytest.fixture
def demo_folders(smoke_run, monkeypatch):
    """The demo's diffens_* folders for one test; returns its work folder."""
    work = smoke_run[0]
    for variable, sub in zip(VARIABLES, ("raw", "preprocessed", "results")):
        monkeypatch.setenv(variable, str(work / sub))
    return work


def test_smoke_recon_demo_reports_every_method_and_resumes(smoke_run):
    work, summary, again = smoke_run
    assert [row["method"] for row in summary["table"]] == [m.name for m in METHODS]
    for row in summary["table"]:
        assert row["failed"] == [] and row["num_cases"] == SMOKE.num_test_cases
        assert np.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1 and row["seconds_per_volume"] is not None
    assert [(r["method"], r["case"]) for r in summary["real_case"]] == [(m.name, REAL_CASE) for m in METHODS]
    assert all(np.isfinite(r["psnr"]) and r["status"] == "ok" for r in summary["real_case"])
    checks = summary["acceptance"]
    assert [c["passed"] is None for c in checks] == [False, False, True, True]
    assert checks[0]["gain_db"] == pytest.approx(summary["table"][2]["psnr"] - summary["table"][0]["psnr"])
    assert json.loads((work / "demo_summary.json").read_text())["table"] == json.loads(json.dumps(again["table"]))
    table = (work / "demo_table.md").read_text()
    assert table == format_recon_table(again) and "smoke run: meaningless numbers" in table
    assert "in-distribution DDS (brain prior) >= zero-filled + 3 dB" in table and REAL_CASE in table
    assert len(summary["previews"]) == SMOKE.num_test_cases + 1
    assert summary["settings"]["experts"] == {ELLIPSES_ID: "2d_axial", BRAIN_ID: "2d_axial"}
    # the resumed run skipped every prediction, so its table (seconds included) is the first run's
    assert again["table"] == summary["table"] and again["real_case"] == summary["real_case"]


def test_the_bundles_folders_are_the_reference_folders(smoke_run):
    work = smoke_run[0]
    for method in METHODS:
        for group in ("phantoms", "real"):
            evaluation = json.loads((work / "evaluation" / f"{method.folder}_{group}.json").read_text())
            assert evaluation["settings"]["reference_folder"] == str(work / "test_bundles" / group)
            assert evaluation["failed"] == [] and evaluation["dataset"]["num_cases"] >= 1
    phantoms = sorted(p.name for p in (work / "test_bundles" / "phantoms").glob("*.npz"))
    assert phantoms == [f"BrainTest_{i:03d}.npz" for i in range(SMOKE.num_test_cases)]


def test_the_real_scan_is_a_case_of_the_brain_task_on_its_own_grid(smoke_run):
    work = smoke_run[0]
    original, original_props = read_image(real_scan_file())
    reference, props = read_image(work / "test_bundles" / "real" / f"{REAL_CASE}_reference.nii.gz")
    assert reference.shape == original.shape == (33, 41, 25) and np.allclose(props["spacing"], [2.0, 2.0, 2.0])
    assert np.allclose(props["origin"], original_props["origin"]) and reference.min() == 0
    assert np.array_equal(reference, np.maximum(original, 0))
    output, output_props = read_image(work / "predictions" / "dds_brain" / "real" / f"{REAL_CASE}.nii.gz")
    assert output.shape == reference.shape and np.allclose(output_props["direction"], props["direction"])


def test_held_out_phantoms_skip_the_anisotropic_kind():
    assert held_out_indices(SMOKE) == [0, 1] and held_out_indices(replace(SMOKE, num_test_cases=4)) == [0, 1, 3, 4]


def test_a_prior_of_another_dataset_reconstructs_the_bundles_with_their_own_mask(demo_folders, tmp_path):
    work = demo_folders
    ellipses = load_plans(work / "preprocessed" / DATASET_NAMES[ELLIPSES_ID], "diffensPlans_tiny")
    brain = load_plans(work / "preprocessed" / DATASET_NAMES[BRAIN_ID], "diffensPlans_tiny")
    for bundle_file in sorted((work / "test_bundles" / "phantoms").glob("*.npz")):
        bundle = read_kspace_bundle(bundle_file)
        by_ellipses = prepare_recon_case(bundle, ellipses, TASK, bundle_file.stem)
        by_brain = prepare_recon_case(bundle, brain, TASK, bundle_file.stem)
        # the operator is the bundle's, whichever dataset's plans prepare it
        assert np.array_equal(by_ellipses.operator.mask.numpy(), bundle.mask)
        assert np.array_equal(zero_filled_magnitude(by_ellipses), zero_filled_magnitude(by_brain))
    # -d 901 -c zero_filled of the brain task's bundles: the same images as -d 900
    summary = zero_filled_from_files(ELLIPSES_ID, TASK, work / "test_bundles" / "phantoms", tmp_path, progress=False)
    assert summary["failed"] == 0
    for bundle_file in sorted((work / "test_bundles" / "phantoms").glob("*.npz")):
        assert np.array_equal(read_image(tmp_path / f"{bundle_file.stem}.nii.gz")[0],
                              read_image(work / "predictions" / "zero_filled" / "phantoms" /
                                         f"{bundle_file.stem}.nii.gz")[0])
    settings = json.loads((work / "predictions" / "dds_ellipses" / "phantoms" / "prediction_settings.json")
                          .read_text())
    assert settings["dataset"] == DATASET_NAMES[ELLIPSES_ID] and settings["task"] == TASK
    assert settings["input_folder"] == str(work / "test_bundles" / "phantoms")


def test_work_folders_of_the_other_demo_and_bad_flags_are_refused(tmp_path, monkeypatch):
    from diffens_auto.demo.pipeline import SMOKE as SR_SMOKE
    from diffens_auto.demo.pipeline import DemoSetupError, check_work_folder
    from diffens_auto.run.demo import demo_entry
    check_work_folder(tmp_path / "sr", SR_SMOKE, 0)
    with pytest.raises(DemoSetupError, match="holds a diffens_demo run of the 'another' setting"):
        run_recon_demo(tmp_path / "sr", setting="smoke", verbose=False)
    with pytest.raises(DemoSetupError, match="Unknown recon demo setting 'legacy'"):
        run_recon_demo(tmp_path / "other", setting="legacy", verbose=False)
    monkeypatch.setattr(sys, "argv", ["diffens_demo", "--recon", "--setting", "legacy"])
    with pytest.raises(SystemExit) as exit_info:
        demo_entry()
    assert exit_info.value.code == 2
