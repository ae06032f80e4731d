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
    assert list(table) == [method for method, _ in METHODS]
    for row in table.values():
        assert row["failed"] == [] and row["num_cases"] == SMOKE.num_test_cases
        assert np.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1 and row["mae"] >= 0
    assert json.loads((work / "demo_summary.json").read_text())["table"] == json.loads(json.dumps(summary["table"]))
    assert (work / "demo_table.md").read_text() == format_table(summary["table"], SMOKE, True)
    assert len(summary["previews"]) == SMOKE.num_test_cases
    # every diffusion prediction pools back to its low-resolution input; trilinear (the floor) need not
    for name in ("2d_axial", "tpdm", "average", "3d_ensembler"):
        for lowres_file in (work / "test_inputs").glob("*_0003.nii.gz"):
            lowres, _ = read_image(lowres_file)
            output, _ = read_image(work / "predictions" / name / lowres_file.name.replace("_0003", ""))
            assert np.abs(avgpool_downsample(output, [4, 4, 4]) - lowres).max() <= 1e-4 * np.ptp(lowres)

    # a re-run resumes: training has nothing to do, predictions are skipped, the table is the same
    mtimes = {p: p.stat().st_mtime_ns for p in (work / "predictions").rglob("*.nii.gz") if "trilinear" not in p.parts}
    again = run_demo(work, smoke=True, num_processes=1, verbose=False)
    for old, new in zip(summary["table"], again["table"]):
        if old["method"] != "Trilinear":      # recomputed (it costs nothing), so its time changes
            assert new == old
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_a_work_folder_of_another_demo_run_is_refused(tmp_path):
    import pytest

    from diffens_auto.demo.pipeline import FULL, DemoSetupError, check_work_folder
    check_work_folder(tmp_path, SMOKE, 0)
    check_work_folder(tmp_path, SMOKE, 0)        # the same settings: fine (resume)
    with pytest.raises(DemoSetupError, match="holds a smoke diffens_demo run with other settings"):
        check_work_folder(tmp_path, FULL, 0)
