"""One mask-seed scheme: the k-space mask preprocessing takes a case's training scale with is the mask
diffens_degrade -t recon draws for that case with its default seed, so prediction's scale |A+ y| is training's."""
import json

import numpy as np
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto import paths
from diffens_auto.imageio import read_image, read_kspace_bundle
from diffens_auto.inference.degrade_inputs import case_seeds, degrade_folder
from diffens_auto.inference.recon_prediction import prepare_recon_case
from diffens_auto.operators import FileOrderKSpace, kspace_fft_axes, kspace_mask
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.preprocessing import mask_seed
from diffens_auto.preprocessing.normalization import kspace_case_seeds
from diffens_auto.preprocessing.storage import load_properties
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess

DATASET, TASK = "Dataset045_Seeds", "recon"
DEGRADATION = {"type": "kspace", "mask": "poisson", "acceleration": 4, "acs": 4, "slice_axis": 2}
CASES = ("case_a", "case_b", "case_c")


def test_mask_seed_and_case_seeds_are_one_derivation():
    for case in CASES:
        assert mask_seed(case) == case_seeds(0, case)[0] == kspace_case_seeds(case)[0]
        assert case_seeds(3, case) == kspace_case_seeds(case, 3) and mask_seed(case, 3) == case_seeds(3, case)[0]
    assert len({mask_seed(case) for case in CASES}) == len(CASES)


@pytest.fixture
def seeds_dataset(diffens_folders, tmp_path):
    """Three scans with no background and one spacing, so preprocessing neither crops nor resamples them."""
    raw = diffens_folders[paths.RAW_VARIABLE] / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    for index, case in enumerate(CASES):
        # the identity direction is LPS: reading it flips two axes into the canonical order
        write_sitk(blob((20, 16, 12), index) + 40.0, raw / "imagesTr" / f"{case}_0000.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "numTraining": len(CASES), "file_ending": ".nii.gz",
        "tasks": {TASK: {"target": "T1", "inputs": [], "degradation": DEGRADATION}}}))
    plan_and_preprocess(45, preset="tiny", num_processes=1)
    return raw


def test_training_and_degrading_draw_one_mask_and_so_one_scale(seeds_dataset, diffens_folders, tmp_path):
    preprocessed = diffens_folders[paths.PREPROCESSED_VARIABLE] / DATASET
    plans = load_plans(preprocessed, "diffensPlans_tiny")
    degradation = plans["tasks"][TASK]["degradation"]
    key = plans["tasks"][TASK]["target_normalization"].partition(":")[2]
    bundles = tmp_path / "bundles"
    assert degrade_folder(seeds_dataset / "imagesTr", bundles, 45, TASK, verbose=False)["num_failed"] == 0
    for case in CASES:
        properties = load_properties(preprocessed / plans["data_identifier"], case)
        image, props = read_image(seeds_dataset / "imagesTr" / f"{case}_0000.nii.gz")
        assert properties["shape_after_crop"] == properties["shape_after_resampling"] == list(image.shape)
        bundle = read_kspace_bundle(bundles / f"{case}.npz")
        # the mask preprocessing draws on the canonical grid, carried to the file's axes, is the bundle's
        training_mask = kspace_mask(degradation, image.shape, seed=mask_seed(case))
        carried = FileOrderKSpace.from_canonical_mask(props["reorientation"], training_mask,
                                                      kspace_fft_axes(degradation)).mask.numpy()
        assert np.array_equal(carried, bundle.mask)
        # hence prediction's scale of the bundle is the one training stored for the case
        stored = properties["normalization"]["0"]["degraded"][key]["half_range"]
        assert prepare_recon_case(bundle, plans, TASK, case).params["half_range"] == pytest.approx(stored, rel=1e-5)
    # another degrade seed draws other masks
    degrade_folder(seeds_dataset / "imagesTr", tmp_path / "seed1", 45, TASK, verbose=False, seed=1)
    assert not np.array_equal(read_kspace_bundle(tmp_path / "seed1" / "case_a.npz").mask,
                              read_kspace_bundle(bundles / "case_a.npz").mask)
