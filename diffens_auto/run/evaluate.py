"""Entry point: diffens_evaluate -ref REF -pred PRED [-mask MASKS] [-std STD] [-o FILE] [...]"""
import argparse
import sys
import warnings
from pathlib import Path

from diffens_auto.run.errors import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare predictions with reference volumes: PSNR, 3D SSIM, MAE and (with uncertainty maps "
                    "CASE_std<ending>) MACE per case and region, their means, and a dataset-level MMD^2 of 3D "
                    "patches. Writes JSON (-o, default PRED/evaluation.json) and CSV beside it.",
        epilog="Example: diffens_evaluate -ref labelsTs_flair -pred predictions -mask brain_masks -o metrics.json "
               "(documentation/evaluation.md). Exit status 1 if any case failed; the other cases are still written.")
    parser.add_argument("-ref", required=True, help="folder of reference volumes: CASE<ending>, or CASE_XXXX<ending>")
    parser.add_argument("-pred", required=True, help="folder of predictions CASE<ending> (CASE_std<ending> files "
                                                     "are uncertainty maps, never predictions)")
    parser.add_argument("-mask", default=None, help="folder of label maps CASE<ending>: metrics inside mask > 0 "
                                                    "('all') and per label value ('label_N')")
    parser.add_argument("-std", default=None, help="folder of uncertainty maps CASE_std<ending> (default: -pred)")
    parser.add_argument("-o", dest="output", default=None,
                        help="JSON file to write; the CSV goes beside it, suffix .csv (default PRED/evaluation.json)")
    parser.add_argument("-data_range", type=float, default=None,
                        help="intensity span L of PSNR and SSIM (default: the reference's max - min per case and "
                             "region)")
    parser.add_argument("-ref_channel", type=int, default=None,
                        help="references are CASE_XXXX<ending> files of this channel (e.g. 1 for CASE_0001)")
    parser.add_argument("-file_ending", default=None, help="image file ending (default: the most common one in -ref)")
    parser.add_argument("-np", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--no_mmd", action="store_true", help="skip the dataset-level MMD^2")
    parser.add_argument("-mmd_patch_size", type=int, default=8, help="side of the cubic MMD patches (default 8)")
    parser.add_argument("-mmd_patches_per_case", type=int, default=32, help="MMD patches per case (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MMD patch positions (default 0)")
    return parser


def evaluate_entry() -> None:
    """diffens_evaluate: evaluate a folder of predictions against a folder of references."""
    parser = _parser()
    args = parser.parse_args()
    if args.data_range is not None and not args.data_range > 0:
        parser.error(f"-data_range {args.data_range}: give a positive number")
    if args.ref_channel is not None and args.ref_channel < 0:
        parser.error(f"-ref_channel {args.ref_channel}: give a channel number >= 0")
    for value, flag in ((args.np, "-np"), (args.mmd_patch_size, "-mmd_patch_size"),
                        (args.mmd_patches_per_case, "-mmd_patches_per_case")):
        if value < 1:
            parser.error(f"{flag} {value}: give a positive number")

    def work():
        from diffens_auto.evaluation import evaluate_folders
        from diffens_auto.evaluation.evaluate_folders import DEFAULT_OUTPUT_NAME, format_summary
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = evaluate_folders(args.ref, args.pred, mask_folder=args.mask, std_folder=args.std,
                                       output_file=args.output, data_range=args.data_range,
                                       file_ending=args.file_ending, num_processes=args.np, mmd=not args.no_mmd,
                                       ref_channel=args.ref_channel, mmd_patch_size=args.mmd_patch_size,
                                       mmd_patches_per_case=args.mmd_patches_per_case, seed=args.seed)
        for warning in caught:
            print(f"WARNING: {warning.message}", file=sys.stderr)
        print(format_summary(results))
        output = Path(args.output or Path(args.pred) / DEFAULT_OUTPUT_NAME)
        print(f"Results written to {output} and {output.with_suffix('.csv')}")
        if results["failed"]:
            print(f"ERROR: {len(results['failed'])} case(s) failed (see above and 'failed' in {output}).",
                  file=sys.stderr)
            sys.exit(1)
    run_command(work)


if __name__ == "__main__":
    evaluate_entry()
