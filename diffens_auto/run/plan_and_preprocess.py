"""Entry points: diffens_plan_and_preprocess, diffens_extract_fingerprint, diffens_plan_experiment, diffens_preprocess."""
import argparse

from diffens_auto.run.errors import run_command


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", nargs="+", required=True, help="dataset id(s) or name(s): 501 or Dataset501_Name")
    parser.add_argument("-np", type=int, default=4, help="worker processes (default 4)")


def _add_planning(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-gpu_memory_target", type=float, default=24.0,
                        help="GPU memory budget in GB every configuration must fit (default 24)")
    parser.add_argument("-pl", default="default", help="planner preset: default (paper scale) or tiny (CPU tests/demo)")


def plan_and_preprocess_entry() -> None:
    """diffens_plan_and_preprocess: fingerprint, plan and preprocess datasets."""
    parser = argparse.ArgumentParser(description="Fingerprint, plan (within a GPU memory budget) and preprocess "
                                                 "raw datasets in $diffens_raw into $diffens_preprocessed.")
    _add_common(parser)
    _add_planning(parser)
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="check every case (channels, readability, 3D, finite, geometry) first")
    parser.add_argument("--no_pp", action="store_true", help="stop after planning (no preprocessing)")
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint and preprocessed cases")
    args = parser.parse_args()

    def work():
        from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
        for d in args.d:
            plans_file = plan_and_preprocess(d, args.pl, gpu_memory_target_gb=args.gpu_memory_target,
                                             num_processes=args.np, verify_integrity=args.verify_dataset_integrity,
                                             no_pp=args.no_pp, clean=args.clean)
            print(f"Plans written to {plans_file}")
    run_command(work)


def extract_fingerprint_entry() -> None:
    """diffens_extract_fingerprint: write dataset_fingerprint.json for datasets."""
    parser = argparse.ArgumentParser(description="Fingerprint raw datasets (spacings, shapes, intensities).")
    _add_common(parser)
    parser.add_argument("--verify_dataset_integrity", action="store_true")
    parser.add_argument("--clean", action="store_true", help="recompute even if a fingerprint exists")
    args = parser.parse_args()

    def work():
        from diffens_auto.workflows.plan_and_preprocess import extract_fingerprint_for_dataset
        for d in args.d:
            extract_fingerprint_for_dataset(d, args.np, args.verify_dataset_integrity, args.clean)
    run_command(work)


def plan_experiment_entry() -> None:
    """diffens_plan_experiment: write a plans file from an existing fingerprint."""
    parser = argparse.ArgumentParser(description="Plan configurations from an existing fingerprint.")
    parser.add_argument("-d", nargs="+", required=True, help="dataset id(s) or name(s)")
    _add_planning(parser)
    args = parser.parse_args()

    def work():
        from diffens_auto.workflows.plan_and_preprocess import plan_dataset
        for d in args.d:
            print(f"Plans written to {plan_dataset(d, args.pl, args.gpu_memory_target)}")
    run_command(work)


def preprocess_entry() -> None:
    """diffens_preprocess: preprocess datasets with an existing plans file."""
    parser = argparse.ArgumentParser(description="Preprocess datasets with an existing plans file.")
    _add_common(parser)
    parser.add_argument("-p", default=None, help="plans name (default: the only plans file there is)")
    parser.add_argument("--clean", action="store_true", help="delete and recompute preprocessed cases")
    args = parser.parse_args()

    def work():
        from diffens_auto.workflows.plan_and_preprocess import preprocess_for_dataset
        for d in args.d:
            print(f"Preprocessed cases in {preprocess_for_dataset(d, args.p, args.np, args.clean)}")
    run_command(work)


if __name__ == "__main__":
    plan_and_preprocess_entry()
