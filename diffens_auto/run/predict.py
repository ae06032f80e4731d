"""Entry point: diffens_predict -i IN -o OUT -d DATASET -t TASK [-c CONFIG] [-f FOLD] [--steps N] ..."""
import argparse
import sys

from diffens_auto.run.errors import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Translate every case of a folder with a trained model: super-resolution from low-resolution "
                    "scans, modality translation, or both; or reconstruct undersampled k-space (recon tasks: "
                    "CASE.npz measurement bundles in, CASE.nii.gz magnitude images out). Outputs CASE<file_ending> "
                    "with the input's geometry (SR: the input grid x the task's factor), plus "
                    "prediction_summary.json/.csv.",
        epilog="Example: diffens_predict -i lowres/ -o sr_out/ -d 900 -t sr (documentation/prediction.md).")
    parser.add_argument("-i", dest="input_folder", required=True,
                        help="input folder: CASE_XXXX<file_ending> files (the task's channels); a one-channel task "
                             "also takes any image file per case; a recon task: CASE.npz measurement bundles")
    parser.add_argument("-o", dest="output_folder", required=True, help="output folder")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (900, Dataset900_DemoBrain)")
    parser.add_argument("-t", dest="task", required=True, help="task: sr, mt, both, ...")
    parser.add_argument("-p", dest="plans", default=None, help="plans name (default: the only one trained)")
    parser.add_argument("-c", dest="configuration", default=None,
                        help="a trained ensembler (3d_ensembler, 3d_ensembler_small, a fusion name) or a strategy "
                             "over trained experts (average, tpdm, 2d_axial, ...); default: the ensembler if "
                             "trained, else average. Recon tasks also take zero_filled: |A+ y|, no model needed")
    parser.add_argument("--experts", nargs="+", default=None,
                        help="with -c average|tpdm: the expert configurations to combine (default: the plans' "
                             "ensembler's experts)")
    parser.add_argument("-f", dest="fold", default="0", help="fold (default 0), or 'all'")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name (default checkpoint_final.pth)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the plans', 50)")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default=None,
                        help="default: the plans' (ddpm since 2026-12; older plans: ddim)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the plans', 0)")
    parser.add_argument("--start_timestep", type=int, default=None,
                        help="the chain's first timestep t' (default: the plans'; SR: from pure noise, recon: DDS's "
                             "980); the steps are spaced over [0, t']")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first sample (default 0)")
    parser.add_argument("--num_samples", type=int, default=1,
                        help="samples per case: writes their mean and CASE_std<file_ending> (default 1)")
    parser.add_argument("--no_consistency", action="store_true",
                        help="skip the consistency projection (per step and on the output); default: the plans' "
                             "diffusion.consistency_projection (true)")
    parser.add_argument("--input_grid", choices=("lr", "hr"), default="lr",
                        help="SR: the input is the low-resolution scan (lr, default) or already on the "
                             "high-resolution grid (hr)")
    parser.add_argument("--dc_gamma", type=float, default=None,
                        help="recon: gamma of DDS's data consistency, the weight of the measurement against the "
                             "prior's estimate (default: the plans' dds.gamma, 5)")
    parser.add_argument("--dc_steps", type=int, default=None,
                        help="recon: CG steps of the data consistency per sampling step (default: the plans' "
                             "dds.cg_steps, 5)")
    adapt = parser.add_argument_group("test-time adaptation (recon and SR tasks; documentation/adaptation.md)")
    adapt.add_argument("--adapt", choices=("none", "d3ip", "d3ip_mbir", "d3ip_meta", "ddip"), default="none",
                       help="adapt the prior to each case during sampling: D3IP (one shared LoRA set on a few "
                            "slices), its TV-ADMM (mbir) or Reptile (meta) variants, or per-slice DDIP (default none)")
    adapt.add_argument("--adapt_slices", type=int, default=None, help="K: slices per optimiser step (plans: 6; SR: whole blocks of slices, 4)")
    adapt.add_argument("--adapt_steps", type=int, default=None, help="L: optimiser steps per adapted timestep")
    adapt.add_argument("--adapt_lr", type=float, default=None, help="AdamW's learning rate of the LoRA set")
    adapt.add_argument("--lora_rank", type=int, default=None, help="rank of the LoRA set (plans: 4)")
    adapt.add_argument("--adapt_horizon", type=int, default=None,
                       help="zeta: adapt at timesteps zeta <= t <= T - zeta (plans: 40)")
    adapt.add_argument("--tv_rho", type=float, default=None, help="d3ip_mbir: ADMM's rho (recon plans: 0.3)")
    adapt.add_argument("--tv_lambda", type=float, default=None,
                       help="d3ip_mbir: TV weight along the slice axis (recon plans: 0.03)")
    adapt.add_argument("--admm_steps", type=int, default=None, help="d3ip_mbir: ADMM passes (plans: 5)")
    adapt.add_argument("--meta_alpha", type=float, nargs=2, metavar=("START", "END"), default=None,
                       help="d3ip_meta: Reptile's alpha at the first and the last adapted step (plans: 1.0 0.5)")
    adapt.add_argument("--save_adapted", action="store_true",
                       help="write each case's LoRA weights beside its output as CASE_lora.pth")
    adapt.add_argument("--lora", default=None, help="start the adaptation from these LoRA weights (a CASE_lora.pth)")
    parser.add_argument("--continue_prediction", action="store_true", help="skip cases whose outputs exist")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (default 1)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this process predicts (0-based)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"), help="default cpu")
    parser.add_argument("--slice_batch_size", type=int, default=None,
                        help="slices per expert forward pass (default: the plans')")
    parser.add_argument("--previews", action="store_true", help="write CASE.png with three planes per case")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# --adapt_* flag -> AdaptationSettings field
_ADAPT_FLAGS = {"adapt_slices": "slices", "adapt_steps": "steps", "adapt_lr": "lr", "lora_rank": "lora_rank",
                "adapt_horizon": "horizon", "tv_rho": "tv_rho", "tv_lambda": "tv_lambda", "admm_steps": "admm_steps",
                "meta_alpha": "meta_alpha"}


def _adaptation(args):
    """The --adapt flags as the predictor takes them."""
    from pathlib import Path

    from diffens_auto.inference.sampling_settings import AdaptationRequest
    overrides = {field: getattr(args, flag) for flag, field in _ADAPT_FLAGS.items() if getattr(args, flag) is not None}
    return AdaptationRequest(args.adapt, overrides, save_adapted=args.save_adapted,
                             lora=Path(args.lora) if args.lora else None)


def _with_model(args) -> dict:
    """Predict with a trained model (every task)."""
    from diffens_auto.inference.predictor import DiffensPredictor
    predictor = DiffensPredictor(steps=args.steps, sampler=args.sampler, eta=args.eta, seed=args.seed,
                                 num_samples=args.num_samples,
                                 consistency=False if args.no_consistency else None, input_grid=args.input_grid,
                                 device=args.device, slice_batch_size=args.slice_batch_size,
                                 progress=not args.quiet, previews=args.previews, dc_gamma=args.dc_gamma,
                                 dc_steps=args.dc_steps, start_timestep=args.start_timestep,
                                 adaptation=_adaptation(args))
    predictor.initialize_from_trained_model(args.dataset, args.task, args.configuration, args.fold, args.plans,
                                            checkpoint=args.checkpoint, experts=args.experts)
    return predictor.predict_from_files(args.input_folder, args.output_folder, args.continue_prediction,
                                        num_parts=args.num_parts, part_id=args.part_id)


# flags that choose a model or how it samples: the zero-filled baseline has neither
_MODEL_FLAGS = {"steps": None, "sampler": None, "eta": None, "start_timestep": None, "dc_gamma": None,
                "dc_steps": None, "num_samples": 1, "experts": None, "adapt": "none", "save_adapted": False,
                "lora": None, **{flag: None for flag in _ADAPT_FLAGS}}


def _zero_filled(args) -> dict:
    """The zero-filled baseline of a recon task: the plans only, no model."""
    given = [f"--{name}" for name, default in _MODEL_FLAGS.items() if getattr(args, name) != default]
    if given:
        from diffens_auto.inference.model import PredictionSetupError
        raise PredictionSetupError(f"-c zero_filled: {' '.join(given)} choose(s) a model or how it samples, and the "
                                   "zero-filled baseline |A+y| has neither. Fix: leave them out.")
    from diffens_auto.inference.recon_prediction import zero_filled_from_files
    return zero_filled_from_files(args.dataset, args.task, args.input_folder, args.output_folder, args.plans,
                                  continue_prediction=args.continue_prediction, num_parts=args.num_parts,
                                  part_id=args.part_id, progress=not args.quiet, previews=args.previews)


def predict_entry() -> None:
    """diffens_predict: predict a folder of cases with a trained model; exit 1 if any case failed."""
    args = _parser().parse_args()
    failed = []

    def work():
        summary = _zero_filled(args) if args.configuration == "zero_filled" else _with_model(args)
        print(f"{summary['done']} predicted, {summary['skipped']} skipped, {summary['failed']} failed "
              f"-> {args.output_folder}")
        for row in summary["cases"]:
            if row["status"] == "failed":
                print(f"FAILED {row['case']}: {row['message']}", file=sys.stderr)
                failed.append(row["case"])
            elif row["message"] and row["status"] == "done":    # a recon case's notes (spacing, reference)
                print(f"NOTE {row['case']}: {row['message']}", file=sys.stderr)
    run_command(work)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    predict_entry()
