"""diffens_benchmark quality: the budget split, paired statistics by hand, and a 1-minute smoke run end to end."""
import json
import math
import subprocess
import sys

import pytest

from diffens_auto.benchmarking.quality import (SMOKE, QualityBenchmarkError, QualitySettings, benchmark_quality,
                                               iteration_plan, paired_statistics, point_minutes)
from diffens_auto.demo.pipeline import FLOORS, METHODS, TASK_METHODS

FLOOR = FLOORS["sr"]


def test_the_budget_is_split_1_2_4_and_shared_by_experts_and_ensembler():
    settings = QualitySettings()
    assert point_minutes(60, settings) == pytest.approx([60 / 7, 120 / 7, 240 / 7])
    assert sum(point_minutes(60, settings)) == pytest.approx(60)
    rates = {"2d_axial": 0.1, "2d_sagittal": 0.1, "2d_coronal": 0.2, "3d_ensembler": 0.5}
    plan = iteration_plan(10, rates, settings)
    # experts: 0.7 x 600 s / 3 = 140 s each; the ensembler 0.3 x 600 s = 180 s
    assert plan == {"2d_axial": 1400, "2d_sagittal": 1400, "2d_coronal": 700, "3d_ensembler": 360}


def test_paired_statistics_against_hand_computed_values():
    stats = paired_statistics([30.0, 32.0, 34.0], [29.0, 30.0, 31.0])
    assert stats["mean"] == 32.0 and stats["se"] == pytest.approx(2 / math.sqrt(3))   # std (ddof 1) = 2
    assert stats["minus_floor"] == 2.0 and stats["minus_floor_se"] == pytest.approx(1 / math.sqrt(3))
    assert stats["num_cases"] == 3


def test_smoke_run_writes_table_plot_and_resumes(tmp_path):
    work = tmp_path / "quality"
    results = benchmark_quality(work, minutes=1, smoke=True, verbose=False)
    assert len(results["points"]) == len(SMOKE.budget_parts)
    for point in results["points"]:
        assert set(point["methods"]) == {m.name for m in METHODS}
        floor = point["methods"][FLOOR]["psnr"]
        assert floor["minus_floor"] == 0.0 and floor["num_cases"] == SMOKE.num_test_cases
        assert all(math.isfinite(row["psnr"]["mean"]) for row in point["methods"].values())
    assert results["points"][0]["iterations"]["3d_ensembler"] < results["points"][-1]["iterations"]["3d_ensembler"]
    table = (work / "quality_table.md").read_text()
    assert table.count("\n| ") == len(METHODS) * len(SMOKE.budget_parts) + 1
    assert (work / "quality_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((work / "quality.json").read_text())["points"] == json.loads(json.dumps(results["points"]))
    # a re-run resumes: nothing is trained or predicted again, the same figures come back
    again = benchmark_quality(work, minutes=1, smoke=True, verbose=False)
    assert again["points"] == results["points"]
    with pytest.raises(QualityBenchmarkError, match="other settings or minutes"):
        benchmark_quality(work, minutes=2, smoke=True, verbose=False)


@pytest.mark.parametrize("task", ["mt", "both"])
def test_translation_tasks_are_compared_with_their_linear_fit_floor(tmp_path, task):
    results = benchmark_quality(tmp_path / task, minutes=1, smoke=True, verbose=False, task=task)
    fit = results["linear_fit"]
    assert fit["inputs"] == [1] and fit["target"] == 3
    assert ("up(A target)" in fit["weights"]) == (task == "both")
    names = {m.name for m in TASK_METHODS[task]}
    for point in results["points"]:
        assert set(point["methods"]) == names and "Trilinear" not in names
        assert all(math.isfinite(row["psnr"]["mean"]) for row in point["methods"].values())
    if task == "both":   # the projected fit beats the plain one: the measurement pins the block means
        last = results["points"][-1]["methods"]
        assert last[FLOORS[task]]["psnr"]["mean"] > last["Linear fit"]["psnr"]["mean"]
    assert (tmp_path / task / "quality_table.md").read_text().startswith(f"{task}: ")


def test_the_command_refuses_a_non_positive_budget(tmp_path):
    run = subprocess.run([sys.executable, "-m", "diffens_auto.run.benchmark", "quality", "--minutes", "0",
                          "--work", str(tmp_path / "q")], capture_output=True, text=True)
    assert run.returncode == 1 and "--minutes must be positive" in run.stderr and "Traceback" not in run.stderr
