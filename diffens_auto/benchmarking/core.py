"""`diffens_benchmark core`: speed of one denoising step per ensembling strategy on a tiny plan.

Reports, for a cubic volume (default 64^3): seconds per denoising step of each strategy (TPDM and the averages
fuse the same experts as the ensembler, see `build_strategies`), the learned/TPDM time ratio, the speed-up of
batched expert slices over a per-slice loop, and achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter)
against the GFLOP/s of one large convolution measured on the same machine.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffens_auto.diffusion.slicing import ExpertRunner, expert_frame, position_channels
from diffens_auto.diffusion.strategies import build_strategy
from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.planning import network_for_task, plan_experiment

TASK = "sr"
STRATEGIES = ("2d_axial", "tpdm", "average", "average_3planes", "3d_ensembler", "3d_ensembler_small")


def tiny_plans(volume: int) -> dict:
    """Plans of the tiny preset for a dataset of `volume`^3 foregrounds at 1 mm with a 4x SR task."""
    channels = {0: "T1", 1: "FLAIR"}
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [[volume] * 3] * 2,
                   "foreground_intensity_properties_per_channel": {
                       str(c): {"percentile_00_5": 0.0, "percentile_99_5": 1.0} for c in channels},
                   # random-weight networks: the residual's spread only sets the scale of y0, not the speed
                   "residual_statistics_per_channel": {"1": {"avgpool_4x4x4": {"rms": 0.25, "abs_max": 1.5}}}}
    tasks = {TASK: {"target": 1, "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}}}
    return plan_experiment(fingerprint, tasks, channels, "Dataset999_Benchmark", preset="tiny")


def build_models(plans: dict, slice_batch_size: int) -> tuple[dict, dict]:
    """Untrained experts (as runners) and ensemblers of a plan's configurations, in eval mode."""
    runners, ensemblers = {}, {}
    for name, config in plans["configurations"].items():
        network = network_for_task(plans, name, TASK)
        if config["kind"] == "expert":
            runners[name] = ExpertRunner.from_network(build_expert(network).eval(), network, config["slice_axis"],
                                                      slice_batch_size, name=name)
        else:
            parametrization = plans["tasks"][TASK]["parametrization"]
            ensemblers[name] = Ensembler(network, config["experts"], [parametrization] * len(config["experts"]),
                                         plans["tasks"][TASK]["ensembler_lambda"]).eval()
    return runners, ensemblers


def build_strategies(plans: dict, runners: dict, ensemblers: dict) -> dict:
    """The benchmarked strategies, built as prediction builds them (see STRATEGIES).

    `tpdm` and `average` fuse the experts of the `3d_ensembler` configuration (what the learned strategies
    fuse; axial + sagittal in every preset), `average_3planes` is TOSM's three-plane average, and the learned
    strategies run on sliding windows of `fine_tune_shape` when their configuration is patch_wise.
    """
    fused = {name: runners[name] for name in plans["configurations"]["3d_ensembler"]["experts"]}
    strategies = {"2d_axial": build_strategy("2d_axial", runners), "tpdm": build_strategy("tpdm", fused),
                  "average": build_strategy("average", fused), "average_3planes": build_strategy("average", runners)}
    inference = plans["inference"]
    for name, ensembler in ensemblers.items():
        config = plans["configurations"][name]
        strategies[name] = build_strategy(
            name, {expert: runners[expert] for expert in config["experts"]}, ensembler,
            window=config["fine_tune_shape"] if config["patch_wise"] else None,
            overlap=inference["sliding_window_overlap"], sigma_scale=inference["gaussian_sigma_scale"])
    return strategies


def seconds_per_call(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as torch's flop counter sees them (convolutions, matmuls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_peak_gflops(repeats: int = 3) -> float:
    """GFLOP/s of one large 3x3x3 convolution (32 -> 32 channels on 48^3), the machine's practical peak here."""
    conv = torch.nn.Conv3d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 48, 48, 48)
    with torch.no_grad():
        flops = count_flops(lambda: conv(x))
        return flops / seconds_per_call(lambda: conv(x), repeats) / 1e9


def benchmark_core(volume: int = 64, repeats: int = 3, seed: int = 0) -> dict:
    """Time one denoising step of every strategy on a `volume`^3 input with a tiny plan; return the figures."""
    torch.manual_seed(seed)
    plans = tiny_plans(volume)
    slice_batch_size = plans["inference"]["slice_batch_size"]
    runners, ensemblers = build_models(plans, slice_batch_size)
    generator = torch.Generator().manual_seed(seed)
    y_t = torch.randn(1, 1, volume, volume, volume, generator=generator)
    condition = torch.randn(1, 1, volume, volume, volume, generator=generator)
    # a whole-volume mask: the frame costs what prediction's does, whatever the mask holds
    frame = expert_frame(position_channels(y_t.shape[2:]), torch.ones_like(y_t))
    t = plans["diffusion"]["num_train_steps"] // 2
    results = {"volume": [volume] * 3, "slice_batch_size": slice_batch_size, "threads": torch.get_num_threads(),
               "strategies": {}}
    strategies = build_strategies(plans, runners, ensemblers)
    with torch.no_grad():
        for name in STRATEGIES:
            strategy = strategies[name]
            step = lambda: strategy(y_t, condition, t, positions=frame)  # noqa: E731
            seconds = seconds_per_call(step, repeats)
            flops = count_flops(step)
            results["strategies"][name] = {"seconds_per_step": seconds, "gflop": flops / 1e9,
                                           "gflops_per_second": flops / seconds / 1e9,
                                           "experts": [runner.name for runner in strategy.runners],
                                           "window": list(getattr(strategy, "window", [])) or None}
        batched = runners["2d_axial"]
        per_slice = ExpertRunner(batched.expert, batched.slice_axis, 1, batched.context_slices,
                                 batched.position_channels, mask_channels=batched.mask_channels, name="2d_axial")
        results["per_slice_loop_seconds"] = seconds_per_call(lambda: per_slice(y_t, condition, t, positions=frame),
                                                             repeats)
    results["batched_seconds"] = results["strategies"]["2d_axial"]["seconds_per_step"]
    results["batched_speedup"] = results["per_slice_loop_seconds"] / results["batched_seconds"]
    timed = results["strategies"]
    results["learned_over_tpdm"] = timed["3d_ensembler"]["seconds_per_step"] / timed["tpdm"]["seconds_per_step"]
    results["conv_peak_gflops_per_second"] = conv_peak_gflops(repeats)
    return results


def format_core_report(results: dict) -> str:
    """Render benchmark_core's figures as a plain-text table."""
    peak = results["conv_peak_gflops_per_second"]
    lines = [f"diffens_benchmark core: tiny plan, volume {'x'.join(map(str, results['volume']))}, "
             f"slice batch {results['slice_batch_size']}, {results['threads']} torch thread(s)",
             f"{'strategy':<20}{'s/step':>10}{'GFLOP':>10}{'GFLOP/s':>10}{'% of conv peak':>16}"]
    for name, r in results["strategies"].items():
        fuses = " + ".join(expert.removeprefix("2d_") for expert in r["experts"])
        window = f", windows {'x'.join(map(str, r['window']))}" if r["window"] else ""
        lines.append(f"{name:<20}{r['seconds_per_step']:>10.3f}{r['gflop']:>10.2f}{r['gflops_per_second']:>10.1f}"
                     f"{100 * r['gflops_per_second'] / peak:>15.0f}%   ({fuses}{window})")
    lines += [f"learned / tpdm time ratio: {results['learned_over_tpdm']:.2f}",
              f"2d_axial batched slices: {results['batched_seconds']:.3f} s vs per-slice loop "
              f"{results['per_slice_loop_seconds']:.3f} s -> speed-up {results['batched_speedup']:.1f}x",
              f"conv peak (Conv3d 32->32, 48^3): {peak:.1f} GFLOP/s"]
    return "\n".join(lines)
