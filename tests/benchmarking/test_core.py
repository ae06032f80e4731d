"""`diffens_benchmark core` on a small volume: it runs, reports every strategy, and builds them as prediction does."""
import copy

from diffens_auto.benchmarking.core import (STRATEGIES, benchmark_core, build_models, build_strategies,
                                            format_core_report, tiny_plans)
from diffens_auto.diffusion.strategies import TPDM, Average, Learned, Windowed


def test_benchmark_core_runs_and_reports_every_figure():
    results = benchmark_core(volume=32, repeats=1)
    report = format_core_report(results)
    assert list(results["strategies"]) == list(STRATEGIES)
    for name in STRATEGIES:
        assert f"\n{name} " in report
        figures = results["strategies"][name]
        assert figures["seconds_per_step"] > 0 and figures["gflop"] > 0
    assert "learned / tpdm time ratio:" in report and results["learned_over_tpdm"] > 0
    assert "per-slice loop" in report and "speed-up" in report and results["batched_speedup"] > 0
    assert "conv peak" in report and results["conv_peak_gflops_per_second"] > 0
    # every two-expert strategy fuses what the ensembler fuses; average_3planes is TOSM's three planes
    fused = ["2d_axial", "2d_sagittal"]
    for name in ("tpdm", "average", "3d_ensembler", "3d_ensembler_small"):
        assert results["strategies"][name]["experts"] == fused, name
    assert sorted(results["strategies"]["average_3planes"]["experts"]) == ["2d_axial", "2d_coronal", "2d_sagittal"]


def test_strategies_follow_the_plans_experts_and_patch_wise():
    plans = tiny_plans(16)
    runners, ensemblers = build_models(plans, 4)
    strategies = build_strategies(plans, runners, ensemblers)
    assert isinstance(strategies["tpdm"], TPDM) and isinstance(strategies["average"], Average)
    assert isinstance(strategies["3d_ensembler"], Learned)           # whole volume: not patch_wise
    patch_wise = copy.deepcopy(plans)
    patch_wise["configurations"]["3d_ensembler"].update(patch_wise=True, fine_tune_shape=[8, 8, 8])
    windowed = build_strategies(patch_wise, runners, ensemblers)["3d_ensembler"]
    assert isinstance(windowed, Windowed) and windowed.window == (8, 8, 8)
    assert windowed.overlap == plans["inference"]["sliding_window_overlap"]
    assert isinstance(windowed.strategy, Learned)
