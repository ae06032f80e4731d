"""diffens_benchmark: figures of the pipeline (`core`: one denoising step per strategy; `training`: training
iterations per second with the real loader against pre-loaded tensors; `quality`: the SR methods' learning curves
on held-out phantoms, for sr, mt or both; `d3ip`: test-time adaptation of an ellipsoid prior against DDS)."""
import argparse
import json
from pathlib import Path

from diffens_auto.atomic import atomic_write_json
from diffens_auto.run.errors import run_command


def benchmark_entry() -> None:
    """diffens_benchmark core [--volume N] [--repeats R] [-o results.json]; training [--iterations N]; quality."""
    parser = argparse.ArgumentParser(description="Benchmarks of diffens_auto; figures are printed (and saved with -o).")
    parser.add_argument("what", choices=["core", "training", "quality", "d3ip"],
                        help="core: one denoising step per ensembling strategy; training: iterations per second with "
                             "the real loader and augmentation vs pre-loaded tensors (expert and ensembler); "
                             "quality: PSNR/SSIM of every method of a task on held-out phantoms against training "
                             "minutes; d3ip: D3IP's variants against DDS with a prior trained on ellipsoids")
    parser.add_argument("--volume", type=int, default=64, help="edge of the cubic test volume (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure, median reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--iterations", type=int, default=10,
                        help="training: timed iterations per figure, after one warm-up (default 10)")
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="quality: total training minutes, split over the learning curve's points (default 15)")
    parser.add_argument("--task", default="sr", choices=("sr", "mt", "both"),
                        help="quality: the demo task (default sr; mt and both are compared with a linear fit of "
                             "their inputs)")
    parser.add_argument("--work", default=None,
                        help="quality: work folder (data, models, predictions, quality_table.md, quality_curve.png; "
                             "a re-run resumes). Default ./diffens_benchmark_quality (sr), "
                             "./diffens_benchmark_quality_TASK otherwise")
    parser.add_argument("--test_cases", type=int, default=None, help="quality: held-out phantoms (default 8)")
    parser.add_argument("--smoke", action="store_true", help="quality: tiny phantoms and 3 steps (CI)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"), help="quality: default cpu")
    parser.add_argument("--models", default=None,
                        help="d3ip: the folder of a finished `diffens_demo --recon -o FOLDER` run (its priors and "
                             "bundles; default: run it in the work folder first)")
    parser.add_argument("--sr_models", default=None,
                        help="d3ip: the folder of a finished `diffens_demo -o FOLDER` run (the SR row's models; "
                             "default: run it in the work folder first)")
    parser.add_argument("--phantoms", type=int, default=None,
                        help="d3ip: held-out brain phantoms (default 1, which fits 20 minutes on 2 CPU cores)")
    parser.add_argument("--quick", action="store_true", help="d3ip: the smoke-sized run (CI)")
    parser.add_argument("-o", default=None, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    import torch

    if args.what == "training":
        _training(args)
        return
    if args.what == "quality":
        run_command(lambda: _quality(args))
        return
    if args.what == "d3ip":
        run_command(lambda: _d3ip(args))
        return

    from diffens_auto.benchmarking.core import benchmark_core, format_core_report
    if args.threads:
        torch.set_num_threads(args.threads)
    results = benchmark_core(args.volume, args.repeats)
    print(format_core_report(results))
    if args.o:
        atomic_write_json(results, args.o)
        print(f"Figures written to {args.o}")
    else:
        print(json.dumps({"learned_over_tpdm": results["learned_over_tpdm"],
                          "batched_speedup": results["batched_speedup"]}))


def _training(args) -> None:
    """diffens_benchmark training: builds a demo dataset in a temporary folder (workers: diffens_n_proc_DA)."""
    import torch

    from diffens_auto.benchmarking.training import benchmark_training, format_training_report
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.iterations < 1:
        raise SystemExit("diffens_benchmark training: --iterations must be 1 or more.")
    results = benchmark_training(args.iterations)
    print(format_training_report(results))
    if args.o:
        atomic_write_json(results, args.o)
        print(f"Figures written to {args.o}")


def _quality(args) -> None:
    """diffens_benchmark quality: train, predict and evaluate on demo phantoms in the work folder."""
    import torch

    from diffens_auto.benchmarking.quality import benchmark_quality, format_quality_table
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or ("diffens_benchmark_quality" if args.task == "sr" else f"diffens_benchmark_quality_{args.task}")
    results = benchmark_quality(work, args.minutes, smoke=args.smoke, device=args.device,
                                num_test_cases=args.test_cases, task=args.task)
    print(format_quality_table(results))
    print(f"Table, plot and figures: {work}/quality_table.md, quality_curve.png, quality.json")
    if args.o:
        atomic_write_json(results, args.o)
        print(f"Figures written to {args.o}")


def _d3ip(args) -> None:
    """diffens_benchmark d3ip: D3IP against DDS on out-of-distribution and in-distribution bundles."""
    import torch

    from diffens_auto.benchmarking.d3ip import benchmark_d3ip
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or "diffens_benchmark_d3ip"
    results = benchmark_d3ip(work, args.models, sr_models=args.sr_models, quick=args.quick, phantoms=args.phantoms,
                             device=args.device)
    print(Path(work, "d3ip_table.md").read_text(encoding="utf-8"))
    print(f"Table and figures: {work}/d3ip_table.md, d3ip.json ({results['total_seconds']:.0f} s)")
    if args.o:
        atomic_write_json(results, args.o)
        print(f"Figures written to {args.o}")


if __name__ == "__main__":
    benchmark_entry()
