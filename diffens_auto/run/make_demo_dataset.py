"""`diffens_make_demo_dataset`: write a synthetic demo dataset (DemoBrain or DemoEllipses) into the raw folder."""
import argparse

from diffens_auto.demo.dataset import (DEFAULT_NOISE, DEFAULT_NUM_CASES, DEFAULT_SHAPE, DEFAULT_SPACING,
                                       DEFAULT_SR_FACTOR, KINDS, make_demo_dataset)
from diffens_auto.run.errors import run_command

# Distinct ids, so that -d names one dataset when both kinds share a raw folder.
DEFAULT_DATASET_IDS = {"brain": 900, "ellipses": 901}


def make_demo_dataset_entry() -> None:
    """Command-line wrapper of `diffens_auto.demo.dataset.make_demo_dataset`."""
    parser = argparse.ArgumentParser(
        description="Write Dataset{ID}_DemoBrain (--kind brain): synthetic 4-channel (T1, T1ce, T2, FLAIR) brain "
        "phantoms with tissue labels and the tasks sr, mt and both, each case on its own grid (orientation, origin, "
        "spacing); or Dataset{ID}_DemoEllipses (--kind ellipses): random 3D ellipsoid phantoms (the ELLIPSES prior "
        "of DDIP/D3IP), one channel T1 and the task sr, every case on one axis-aligned grid."
    )
    parser.add_argument("--kind", choices=KINDS, default="brain",
                        help="brain: multi-contrast brain phantoms; ellipses: random ellipsoid phantoms, 0 outside "
                        "a centred ball (default: brain)")
    parser.add_argument("-d", "--dataset_id", type=int, default=None,
                        help="dataset id (default: 900 for brain, 901 for ellipses)")
    parser.add_argument("-n", "--num_cases", type=int, default=DEFAULT_NUM_CASES,
                        help=f"number of cases (default: {DEFAULT_NUM_CASES})")
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("X", "Y", "Z"),
                        help=f"nominal field of view in voxels (default: {' '.join(map(str, DEFAULT_SHAPE))})")
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING), metavar=("X", "Y", "Z"),
                        help=f"nominal spacing in mm (default: {' '.join(map(str, DEFAULT_SPACING))})")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                        help="Rician noise level relative to the signal scale, 0 = noise-free (the paper's "
                        f"ellipses are noise-free) (default: {DEFAULT_NOISE})")
    parser.add_argument("--sr_factor", type=int, default=DEFAULT_SR_FACTOR,
                        help="average-pooling factor per axis of the sr (and both) tasks in dataset.json "
                        f"(default: {DEFAULT_SR_FACTOR})")
    parser.add_argument("-o", "--output_folder", default=None,
                        help="folder to write the dataset into (default: the raw folder, $diffens_raw)")
    args = parser.parse_args()
    dataset_id = DEFAULT_DATASET_IDS[args.kind] if args.dataset_id is None else args.dataset_id

    def work():
        try:
            folder = make_demo_dataset(args.output_folder, dataset_id, num_cases=args.num_cases,
                                       shape=tuple(args.shape), spacing=tuple(args.spacing), seed=args.seed,
                                       noise=args.noise, sr_factor=args.sr_factor, kind=args.kind)
        except ValueError as e:  # the arguments do not make a valid phantom
            parser.error(str(e))
        print(f"Wrote {args.num_cases} demo cases to {folder}")
    run_command(work)


if __name__ == "__main__":
    make_demo_dataset_entry()
