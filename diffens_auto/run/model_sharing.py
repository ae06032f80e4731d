"""Entry points: diffens_export_model_to_zip and diffens_install_pretrained_model_from_zip.

    diffens_export_model_to_zip -d DATASET -o model.zip [-t TASK ...] [-c CONFIG ...] [-f FOLD ...] [-p PLANS]
                                [-chk checkpoint_final.pth ...]
    diffens_install_pretrained_model_from_zip ZIP [--overwrite]

Run as a module: python -m diffens_auto.run.model_sharing export ... | install ...
"""
import argparse

from diffens_auto.run.errors import run_command


def _export_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Pack trained models of a dataset into one zip for another machine: each model folder's "
                          "plans.json, dataset.json, dataset_fingerprint.json and, per fold, the checkpoints, "
                          "progress.png, training logs and validation/summary.json. An ensembler brings the exact "
                          "expert checkpoints it was trained with (their SHA-256 checked). Default: every trained "
                          "task and configuration of fold 0.")
    parser.epilog = ("Example: diffens_export_model_to_zip -d 900 -o demo_sr.zip -t sr -c 3d_ensembler; install "
                     "it with diffens_install_pretrained_model_from_zip demo_sr.zip (documentation/model_sharing.md).")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name: 900 or Dataset900_DemoBrain")
    parser.add_argument("-o", dest="output_file", required=True, help="the zip file to write")
    parser.add_argument("-t", dest="tasks", nargs="+", default=None, help="tasks to export (default: all trained)")
    parser.add_argument("-c", dest="configurations", nargs="+", default=None,
                        help="configurations to export, e.g. 3d_ensembler 2d_axial (default: all trained; named "
                             "ones must have every requested fold and checkpoint)")
    parser.add_argument("-f", dest="folds", nargs="+", default=["0"], help="folds, numbers or 'all' (default 0)")
    parser.add_argument("-p", dest="plans", default=None, help="plans name (default: all plans)")
    parser.add_argument("-chk", dest="checkpoints", nargs="+", default=["checkpoint_final.pth"],
                        help="checkpoint files to export (default checkpoint_final.pth)")
    return parser


def _install_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Install a model zip made by diffens_export_model_to_zip into $diffens_results, after "
                          "checking every file's SHA-256 against the zip's manifest. Files already there with the "
                          "same contents are kept; different ones are refused unless --overwrite.")
    parser.add_argument("zip", help="the model zip")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files that differ from the zip's")
    return parser


def _export(args) -> None:
    from diffens_auto.model_sharing import export_model_to_zip
    path = export_model_to_zip(args.dataset, args.output_file, tasks=args.tasks, configurations=args.configurations,
                               folds=args.folds, plans_name=args.plans, checkpoints=args.checkpoints)
    print(f"Wrote {path}")


def _install(args) -> None:
    from diffens_auto import paths
    from diffens_auto.model_sharing import install_model_from_zip
    installed = install_model_from_zip(args.zip, overwrite=args.overwrite)
    print(f"Installed {len(installed)} files into {paths.results_folder()}")


def export_model_entry() -> None:
    """diffens_export_model_to_zip: write trained models (and their ensemblers' experts) into a zip."""
    args = _export_parser(argparse.ArgumentParser()).parse_args()
    run_command(lambda: _export(args))


def install_model_entry() -> None:
    """diffens_install_pretrained_model_from_zip: install a model zip into diffens_results."""
    args = _install_parser(argparse.ArgumentParser()).parse_args()
    run_command(lambda: _install(args))


def _main() -> None:
    """`python -m diffens_auto.run.model_sharing export|install ...`: both commands behind one module."""
    parser = argparse.ArgumentParser(description="Export trained models to a zip, or install one.")
    commands = parser.add_subparsers(dest="command", required=True)
    _export_parser(commands.add_parser("export", help="diffens_export_model_to_zip"))
    _install_parser(commands.add_parser("install", help="diffens_install_pretrained_model_from_zip"))
    args = parser.parse_args()
    run_command(lambda: (_export if args.command == "export" else _install)(args))


if __name__ == "__main__":
    _main()
