"""Entry point: diffens_train DATASET TASK CONFIG [-f FOLD|all] [-p PLANS] [--c] [-device cpu|cuda|mps] ..."""
import argparse

from diffens_auto.run.errors import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a 2D expert (2d_axial, 2d_sagittal, 2d_coronal) or, once its experts are trained, a 3D "
                    "ensembler (3d_ensembler, 3d_ensembler_small) of one task and fold. Results go to "
                    "$diffens_results/DatasetXXX/TASK/CONFIG__PLANS/fold_F/.",
        epilog="Example: diffens_train 900 sr 2d_axial; diffens_train 900 sr 2d_sagittal; diffens_train 900 sr "
               "3d_ensembler. Fusion: diffens_train 900 both 3d_ensembler --experts sr:2d_axial both:2d_sagittal "
               "--name 3d_fusion.")
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
    parser.add_argument("-num_gpus", type=int, default=1, help="data-parallel processes (DDP; not yet: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and noise (default 0)")
    parser.add_argument("--experts", nargs="+", default=None, metavar="TASK:CONFIG",
                        help="fusion ensembler: the trained experts to fuse, e.g. sr:2d_axial mt:2d_axial")
    parser.add_argument("--name", default=None, help="configuration name a fusion ensembler is saved under")
    return parser


def train_entry() -> None:
    """diffens_train: train one configuration (an expert or an ensembler) of one task and fold."""
    args = _parser().parse_args()

    def work():
        from diffens_auto.training.trainer import TrainingSetupError, train
        if args.num_gpus != 1:
            raise TrainingSetupError(f"-num_gpus {args.num_gpus}: multi-GPU (DDP) training is not available "
                                     "yet; train with -num_gpus 1.")
        for value, flag in ((args.epochs, "--epochs"), (args.iterations_per_epoch, "--iterations_per_epoch")):
            if value is not None and value < 1:
                raise TrainingSetupError(f"{flag} {value}: give a positive number.")
        folder = train(args.dataset, args.task, args.configuration, args.fold, args.plans,
                       args.continue_training, args.device, args.epochs, args.iterations_per_epoch,
                       args.experts, args.name, args.seed)
        print(f"Trained model in {folder}")
    run_command(work)


if __name__ == "__main__":
    train_entry()
