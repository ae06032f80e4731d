"""diffens_benchmark: speed and memory figures of the pipeline's parts (`core`: one denoising step per strategy)."""
import argparse
import json

from diffens_auto.atomic import atomic_write_json


def benchmark_entry() -> None:
    """diffens_benchmark core [--volume N] [--repeats R] [-o results.json]."""
    parser = argparse.ArgumentParser(description="Benchmarks of diffens_auto; figures are printed (and saved with -o).")
    parser.add_argument("what", choices=["core"], help="core: one denoising step per ensembling strategy")
    parser.add_argument("--volume", type=int, default=64, help="edge of the cubic test volume (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure, median reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("-o", default=None, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    import torch

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


if __name__ == "__main__":
    benchmark_entry()
