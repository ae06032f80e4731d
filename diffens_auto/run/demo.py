"""diffens_demo: the whole pipeline on a bundled synthetic dataset (so far: demo data, fingerprint, tiny plans,
preprocessing; training and prediction join as their stages land)."""
import argparse
import json
import time
from pathlib import Path

from diffens_auto import paths
from diffens_auto.run.errors import run_command

DEMO_DATASET_ID = 900


def run_demo(work_folder: str | Path, smoke: bool = False, num_processes: int = 2) -> dict:
    """Build the demo dataset in `work_folder`, plan it with the tiny preset and preprocess it; return a summary."""
    from diffens_auto.dataset.demo import make_demo_dataset
    from diffens_auto.preprocessing.plan_and_preprocess import plan_and_preprocess

    folders = paths.use_folders(work_folder)
    started = time.time()
    num_cases = 5 if smoke else 10
    dataset_folder = make_demo_dataset(folders[paths.RAW_VARIABLE], dataset_id=DEMO_DATASET_ID, num_cases=num_cases)
    plans_file = plan_and_preprocess(DEMO_DATASET_ID, preset="tiny", num_processes=num_processes,
                                     verify_integrity=True)
    plans = json.loads(Path(plans_file).read_text())
    summary = {
        "dataset": str(dataset_folder),
        "plans": str(plans_file),
        "target_spacing": plans["target_spacing"],
        "crop_size": plans["crop_size"],
        "configurations": {name: {"patch_size": c["patch_size"], "batch_size": c["batch_size"],
                                  "memory_estimate_gb": c["memory_estimate_gb"]}
                           for name, c in plans["configurations"].items()},
        "seconds": round(time.time() - started, 1),
    }
    return summary


def demo_entry() -> None:
    """diffens_demo: run the pipeline end to end on synthetic data and print what it produced."""
    parser = argparse.ArgumentParser(description="Run diffens_auto end to end on a synthetic brain-phantom dataset.")
    parser.add_argument("-o", default="diffens_demo_output", help="work folder (default ./diffens_demo_output)")
    parser.add_argument("--smoke", action="store_true", help="fewer cases, for CI")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    def work():
        summary = run_demo(args.o, smoke=args.smoke, num_processes=args.np)
        print(json.dumps(summary, indent=2))
        print("Training, prediction and evaluation join the demo as their stages land (see README).")
    run_command(work)


if __name__ == "__main__":
    demo_entry()
