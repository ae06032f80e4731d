"""Entry point: diffens_train DATASET TASK CONFIG [-f FOLD|all] [-p PLANS] [--c] [-device cpu|cuda|mps] [--val] ...

Training ends with a validation (workflows/validation.py) unless --no_val; --val only validates.

Also runs as one rank of a torchrun job: torchrun ... -m diffens_auto.run.train DATASET TASK CONFIG ...
"""
import argparse

from diffens_auto.run.errors import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a 2D expert (2d_axial, 2d_sagittal, 2d_coronal) or, once its experts are trained, a 3D "
                    "ensembler (3d_ensembler, 3d_ensembler_small) of one task and fold. Results go to "
                    "$diffens_results/DatasetXXX/TASK/CONFIG__PLANS/fold_F/.",
        epilog="Example: diffens_train 900 sr 2d_axial; diffens_train 900 sr 2d_sagittal; diffens_train 900 sr "
               "3d_ensembler. Fusion: diffens_train 900 both 3d_ensembler --experts sr:2d_axial both:2d_sagittal "
               "--name 3d_fusion. Data-parallel: diffens_train 900 sr 2d_axial -num_gpus 2 -device cuda; across "
               "machines: torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 "
               "-m diffens_auto.run.train 900 sr 2d_axial -device cuda (documentation/training.md).")
    parser.add_argument("dataset", help="dataset id or name: 900 or Dataset900_DemoBrain")
    parser.add_argument("task", help="task of dataset.json / the plans: sr, mt, both, ...")
    parser.add_argument("configuration", help="plans configuration: 2d_axial, 2d_sagittal, 2d_coronal, "
                                              "3d_ensembler, 3d_ensembler_small")
    parser.add_argument("-f", dest="fold", default="0", help="fold of splits_final.json, or 'all' (default 0)")
    parser.add_argument("-p", dest="plans", default=None, help="plans name (default: the only plans file there is)")
    parser.add_argument("--c", dest="continue_training", action="store_true",
                        help="continue from the fold's checkpoint_latest/final (exact resume)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"), help="default cpu")
    parser.add_argument("--epochs", type=int, default=None, help="override the plans' number of epochs")
    parser.add_argument("--iterations_per_epoch", type=int, default=None, help="override the plans' iterations")
    parser.add_argument("-num_gpus", type=int, default=1,
                        help="data-parallel (DDP) processes on this machine, one per GPU (NCCL); with -device cpu "
                             "CPU processes (gloo). The plans' batch size is split over them (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and noise (default 0)")
    parser.add_argument("--experts", nargs="+", default=None, metavar="TASK:CONFIG",
                        help="fusion ensembler: the trained experts to fuse, e.g. sr:2d_axial mt:2d_axial")
    parser.add_argument("--name", default=None, help="configuration name a fusion ensembler is saved under")
    parser.add_argument("--val", action="store_true",
                        help="only validate: sample the fold's validation cases with the trained model and write "
                             "validation/summary.json (training ends with the same validation)")
    parser.add_argument("--no_val", action="store_true", help="skip the validation at the end of training")
    parser.add_argument("--val_steps", type=int, default=None,
                        help="sampling steps of the validation (default: the plans' steps, at most 10)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="with --val: the checkpoint to validate (default checkpoint_final.pth)")
    return parser


def train_entry() -> None:
    """diffens_train: train one configuration (an expert or an ensembler) of one task and fold, then validate it."""
    args = _parser().parse_args()

    def work():
        from diffens_auto.training.errors import TrainingSetupError
        from diffens_auto.workflows.train import train, validate_trained
        if args.val and args.no_val:
            raise TrainingSetupError("--val (only validate) and --no_val (do not validate) exclude each other.")
        if args.val:
            validate_trained(args.dataset, args.task, args.name or args.configuration, args.fold, args.plans,
                             checkpoint=args.checkpoint, steps=args.val_steps, seed=args.seed, device=args.device)
            return
        train(args.dataset, args.task, args.configuration, args.fold, args.plans,
              continue_training=args.continue_training, device=args.device, num_epochs=args.epochs,
              iterations_per_epoch=args.iterations_per_epoch, experts=args.experts, name=args.name, seed=args.seed,
              num_gpus=args.num_gpus, validate=not args.no_val, val_steps=args.val_steps,
              val_checkpoint=args.checkpoint)
    run_command(work)


if __name__ == "__main__":
    train_entry()
