"""`diffens_benchmark training` with very few iterations: it builds its demo workspace, runs and reports every figure."""
import sys

import pytest

from diffens_auto import paths
from diffens_auto.benchmarking.training import MODES, benchmark_training, format_training_report
from diffens_auto.run.benchmark import benchmark_entry


@pytest.fixture
def restored_environment(monkeypatch):
    """The benchmark points the diffens_* variables at its work folder: give them back afterwards."""
    for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        monkeypatch.setenv(variable, "unset-by-the-test")
    monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "1")     # the worker path, with one worker


@pytest.mark.slow
def test_training_benchmark_reports_every_figure(restored_environment, tmp_path):
    results = benchmark_training(iterations=1, folder=tmp_path, num_cases=3, shape=(32, 32, 32), spacing=(2, 2, 2))
    assert results["workers"] == 1
    rows = [(r["configuration"], r["stage"]) for r in results["rows"]]
    assert rows == [("2d_axial", "train"), ("3d_ensembler", "pretrain"), ("3d_ensembler", "finetune")]
    for row in results["rows"]:
        for figure in (*MODES, "loader alone"):
            assert row[figure] > 0, (row, figure)
    report = format_training_report(results)
    assert "1 workers" in report and "0 workers" in report and "preloaded" in report
    assert report.count("\n3d_ensembler ") == 2 and "\n2d_axial " in report


def test_command_line_offers_training_beside_core(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["diffens_benchmark", "--help"])
    with pytest.raises(SystemExit):
        benchmark_entry()
    out = capsys.readouterr().out
    assert "{core,training,quality,d3ip}" in out and "--iterations" in out and "--minutes" in out
