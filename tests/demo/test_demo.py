"""diffens_demo --smoke: the whole pipeline in one call, its table and files, and a re-run that resumes."""
import json

import numpy as np

from diffens_auto.demo.pipeline import METHODS, SMOKE, format_table, run_demo
from diffens_auto.imageio import read_image
from diffens_auto.operators import avgpool_downsample


def test_smoke_demo_reports_every_method_and_resumes(tmp_path, monkeypatch):
    work = tmp_path / "demo"
    summary = run_demo(work, smoke=True, num_processes=1, verbose=False)
    table = {row["method"]: row for row in summary["table"]}
    assert list(table) == [method.name for method in METHODS]
    for row in table.values():
        assert row["failed"] == [] and row["num_cases"] == SMOKE.num_test_cases
        assert np.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1 and row["mae"] >= 0
    assert json.loads((work / "demo_summary.json").read_text())["table"] == json.loads(json.dumps(summary["table"]))
    assert (work / "demo_table.md").read_text() == format_table(summary["table"], SMOKE, True, "ddpm")
    assert summary["settings"]["sampler"] == "ddpm"
    assert len(summary["previews"]) == SMOKE.num_test_cases
    # every diffusion prediction and the projected trilinear floor pool back to the low-resolution input exactly;
    # plain trilinear interpolation does not
    factor = [SMOKE.sr_factor] * 3
    for name in ("trilinear_projected", "2d_axial", "tpdm", "average", "average_3", "3d_ensembler", "trilinear"):
        for lowres_file in (work / "test_inputs").glob("*_0003.nii.gz"):
            lowres, _ = read_image(lowres_file)
            output, _ = read_image(work / "predictions" / name / lowres_file.name.replace("_0003", ""))
            error = np.abs(avgpool_downsample(output, factor) - lowres).max()
            assert (error > 1e-2 * np.ptp(lowres)) if name == "trilinear" else (error <= 1e-4 * np.ptp(lowres))

    # a re-run resumes: training has nothing to do, predictions are skipped, the table is the same
    mtimes = {p: p.stat().st_mtime_ns for p in (work / "predictions").rglob("*.nii.gz")
              if not p.parent.name.startswith("trilinear")}
    again = run_demo(work, smoke=True, num_processes=1, verbose=False)
    for old, new in zip(summary["table"], again["table"]):
        if not old["method"].startswith("Trilinear"):      # recomputed (it costs nothing), so its time changes
            assert new == old
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_a_work_folder_of_another_demo_run_is_refused(tmp_path):
    import pytest

    from diffens_auto.demo.pipeline import FULL, DemoSetupError, check_work_folder
    check_work_folder(tmp_path, SMOKE, 0)
    check_work_folder(tmp_path, SMOKE, 0)        # the same settings: fine (resume)
    with pytest.raises(DemoSetupError, match="holds a diffens_demo run of the 'smoke' setting"):
        check_work_folder(tmp_path, FULL, 0)
    with pytest.raises(DemoSetupError, match="Unknown demo setting 'huge'.*full"):
        run_demo(tmp_path / "other", setting="huge")
