"""Entry point: diffens_degrade -i HR_FOLDER -o LR_FOLDER -d DATASET -t TASK [-np N] [--seed S]."""
import argparse
import sys
from pathlib import Path

from diffens_auto.run.errors import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a task's prediction inputs from high-resolution scans: the target channel degraded with "
                    "the task's degradation (on its low-resolution grid), the task's other inputs copied unchanged. "
                    "A task without a degradation (e.g. mt) only copies its inputs. File names stay the same "
                    "(CASE_XXXX.nii.gz). A reconstruction task (a kspace degradation, e.g. recon) writes a "
                    "measurement bundle CASE.npz per case (seeded masks, the degradation's noise) and the fully "
                    "sampled CASE_reference.nii.gz beside it. The dataset.json is taken from diffens_raw, else "
                    "diffens_preprocessed, else an installed model.",
        epilog="Example: diffens_degrade -i imagesTs -o imagesTs_lowres -d 900 -t sr; then diffens_predict -i "
               "imagesTs_lowres -o predictions -d 900 -t sr (documentation/degrade.md). For recon: diffens_degrade -i "
               "imagesTs -o imagesTs_recon -d 900 -t recon --seed 0.")
    parser.add_argument("-i", dest="input_folder", required=True,
                        help="folder of high-resolution scans named CASE_XXXX<file_ending> (e.g. imagesTs)")
    parser.add_argument("-o", dest="output_folder", required=True, help="folder to write the prediction inputs to")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name: 900 or Dataset900_DemoBrain")
    parser.add_argument("-t", dest="task", required=True, help="task of dataset.json: sr, mt, both, ...")
    parser.add_argument("-np", dest="num_processes", type=int, default=1,
                        help="worker processes, one case each (default 1)")
    parser.add_argument("--seed", dest="seed", type=int, default=0,
                        help="k-space tasks: seed of the masks and noise, combined with each case id so every case "
                             "has its own mask and a run is reproducible (default 0; other tasks draw nothing)")
    return parser


def degrade_entry() -> None:
    """diffens_degrade: make a task's prediction inputs from high-resolution scans; exit 1 if any case failed."""
    parser = _parser()
    args = parser.parse_args()
    if args.num_processes < 1:
        parser.error(f"-np {args.num_processes}: give a positive number of processes.")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: give an integer >= 0.")
    if Path(args.input_folder).resolve() == Path(args.output_folder).resolve():
        parser.error(f"-o {args.output_folder} is the input folder: the degraded target would replace its "
                     "high-resolution scan. Give another output folder.")

    def work():
        from diffens_auto.inference.degrade_inputs import FAILED, degrade_folder
        summary = degrade_folder(args.input_folder, args.output_folder, args.dataset, args.task,
                                 num_processes=args.num_processes, seed=args.seed)
        print(f"{summary['dataset']} task {summary['task']}: {summary['note']}.")
        for entry in summary["cases"]:
            if entry["status"] == FAILED:
                print(f"FAILED {entry['case']}: {entry['message']}", file=sys.stderr)
        print(f"{summary['num_written']} case(s) written to {summary['output_folder']}, "
              f"{summary['num_failed']} failed.")
        if summary["num_failed"]:
            sys.exit(1)
    run_command(work)


if __name__ == "__main__":
    degrade_entry()
