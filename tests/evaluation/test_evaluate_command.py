"""diffens_evaluate: writes JSON and CSV, prints the means, exits 1 on failed cases and on user errors."""
import json
import sys

import numpy as np
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto.run.evaluate import evaluate_entry

SHAPE = (12, 12, 12)


def run_entry(monkeypatch, *args):
    """Run the command in this process; return its exit status (0 if it returned normally)."""
    monkeypatch.setattr(sys, "argv", ["diffens_evaluate", *args])
    try:
        evaluate_entry()
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    for i in range(2):
        write_sitk(blob(SHAPE, i), ref / f"case{i}.nii.gz")
        write_sitk(blob(SHAPE, i) + np.float32(1.0), pred / f"case{i}.nii.gz")
        write_sitk(np.ones(SHAPE, np.float32), pred / f"case{i}_std.nii.gz")
    return ref, pred


def test_command_writes_json_and_csv(folders, tmp_path, monkeypatch, capsys):
    ref, pred = folders
    out = tmp_path / "metrics" / "metrics.json"
    assert run_entry(monkeypatch, "-ref", str(ref), "-pred", str(pred), "-o", str(out), "-np", "1",
                     "-mmd_patches_per_case", "4") == 0
    results = json.loads(out.read_text())
    assert {"metric_definitions", "per_case", "mean", "dataset", "failed"} <= set(results)
    assert results["failed"] == [] and results["mean"]["all"]["mae"] == pytest.approx(1.0)
    assert results["mean"]["all"]["mace"] == pytest.approx(0.0)       # std 1 = |error| 1 everywhere
    assert (tmp_path / "metrics" / "metrics.csv").is_file()
    printed = capsys.readouterr().out
    assert "foreground" in printed and "MMD^2" in printed and str(out) in printed


def test_failed_case_exits_1_after_writing_the_others(folders, monkeypatch, capsys):
    ref, pred = folders
    write_sitk(blob(SHAPE, 1), pred / "case1.nii.gz", origin=(5.0, 0.0, 0.0))
    assert run_entry(monkeypatch, "-ref", str(ref), "-pred", str(pred), "-np", "1", "--no_mmd") == 1
    results = json.loads((pred / "evaluation.json").read_text())
    assert [r["status"] for r in results["per_case"]] == ["ok", "ok", "failed"]
    stderr = capsys.readouterr().err
    assert "1 case(s) failed" in stderr


def test_user_errors_exit_1_with_a_message(folders, tmp_path, monkeypatch, capsys):
    ref, _ = folders
    assert run_entry(monkeypatch, "-ref", str(ref), "-pred", str(tmp_path / "nope")) == 1
    assert "ERROR:" in capsys.readouterr().err
    assert run_entry(monkeypatch, "-ref", str(ref), "-pred", str(ref), "-data_range", "0") == 2   # argparse
