"""The whole prediction chain with an oracle denoiser returns the true image.

The oracle returns the exact noise of the true target at every step, so every step's x0 estimate IS the true
target (in the task's normalisation and parametrization, on the preprocessed grid). Whatever the chain then does
(padding, the per-step projection, the residual/target conversion, inversion, background, the final projection)
must give back the reference. The reference's spacing is set to the plans' target spacing, so preprocessing only
crops: any error beyond float rounding is a bug of the chain, not resampling.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffens_auto.diffusion.padding import unpad
from diffens_auto.imageio import read_image
from diffens_auto.inference.case_preparation import prepare_case, resample_like_case
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.operators import degrade_image
from diffens_auto.preprocessing.normalization import normalize
from diffens_auto.tasks.conditioning import y0_from_target

SR = {"type": "avgpool", "factor": [4, 4, 4]}


class Oracle:
    """eps = (y_t - sqrt(alpha_bar_t) y0) / sqrt(1 - alpha_bar_t) for a known y0 (the denoiser interface)."""

    def __init__(self, y0, schedule):
        self.y0, self.schedule = y0, schedule

    def __call__(self, y_t, condition, t):
        alpha_bar = torch.as_tensor(float(self.schedule.alpha_bar[int(t)]), dtype=y_t.dtype)
        return (y_t - alpha_bar.sqrt() * self.y0) / (1 - alpha_bar).sqrt()


def _case_on_target_spacing(demo, plans, case_id: str, size: int = 28):
    """A demo case's FLAIR and T1ce cropped to size^3 (whole 4^3 blocks), relabelled at the plans' spacing."""
    raw = demo.raw / "Dataset900_DemoBrain" / "imagesTr"
    images = {}
    for channel in (1, 3):
        array, props = read_image(raw / f"{case_id}_{channel:04d}.nii.gz")
        props = {**props, "spacing": [float(s) for s in plans["target_spacing"]], "shape": [size] * 3}
        images[channel] = (np.ascontiguousarray(array[:size, :size, :size]), props)
    return images


@pytest.mark.parametrize("task", ["sr", "both"])
@pytest.mark.parametrize("stray_voxel", [False, True])
def test_an_oracle_denoiser_gives_back_the_reference(trained_demo_folders, task, stray_voxel):
    predictor = DiffensPredictor(steps=4, progress=False).initialize_from_trained_model(900, task, "2d_axial")
    plans, task_plans = predictor.model.plans, predictor.model.task_plans
    images = _case_on_target_spacing(trained_demo_folders, plans, "DemoBrain_003")
    reference, reference_props = images[3]
    t1ce, t1ce_props = images[1]
    lowres, lowres_props = degrade_image(reference, reference_props, SR)
    if stray_voxel:
        # a T1ce voxel inside a block whose FLAIR is 0, one voxel off the block grid: it must not shift the blocks
        # of the per-step projection (the crop is made of the FLAIR's non-zero blocks only)
        block = np.argwhere(lowres == 0)[0]
        t1ce = t1ce.copy()
        t1ce[tuple(4 * block + 1)] = 5.0
    arrays, props = {3: lowres}, {3: lowres_props}
    if task == "both":
        arrays[1], props[1] = t1ce, t1ce_props
    case = prepare_case(arrays, props, plans, task, input_grid="lr", case_id="oracle")
    assert case.properties["shape_after_crop"] == case.properties["shape_after_resampling"]   # crop only

    region = tuple(slice(lo, hi) for lo, hi in case.properties["bbox"])
    true_target = torch.from_numpy(normalize(reference[region], case.target_params))[None, None]
    y0 = y0_from_target(true_target, unpad(case.condition, case.pads), task_plans)
    y0 = F.pad(y0, [p for pair in reversed(case.pads) for p in pair])
    predictor.model.strategy = Oracle(y0, predictor.sampler.schedule)
    output = predictor.sample_case(case)[0]

    assert output.shape == reference.shape
    assert np.abs(output - reference).max() <= 1e-3 * np.abs(reference).max()


def _psnr(reference: np.ndarray, output: np.ndarray) -> float:
    data_range = float(reference.max() - reference.min())
    return 10 * np.log10(data_range ** 2 / float(np.mean((output.astype(np.float64) - reference) ** 2)))


@pytest.mark.parametrize("tolerance", [0.1, "absent"])
def test_per_step_projection_off_the_target_spacing_costs_nothing(trained_demo_folders, tolerance):
    """A case 4 % off the target spacing: the oracle chain with per-step projection scores as the one without.

    Within sr_spacing_tolerance (0.1 here) the case is sampled on its own output grid, where the projection pools
    the input's blocks exactly; plans without the key (made before it existed) resample the case and project onto
    blocks that drift against the input's, which the key avoids (the planned 0 resamples such a case and skips the
    per-step projection: the two chains are then the same).
    """
    predictor = DiffensPredictor(steps=4, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
    plans, task_plans = predictor.model.plans, predictor.model.task_plans
    if tolerance == "absent":
        plans["inference"].pop("sr_spacing_tolerance")
    else:
        plans["inference"]["sr_spacing_tolerance"] = tolerance
    reference, reference_props = _case_on_target_spacing(trained_demo_folders, plans, "DemoBrain_003")[3]
    reference_props["spacing"] = [1.04 * s for s in reference_props["spacing"]]
    lowres, lowres_props = degrade_image(reference, reference_props, SR)
    case = prepare_case({3: lowres}, {3: lowres_props}, plans, "sr", input_grid="lr", case_id="oracle")
    resampled = case.properties["shape_after_crop"] != case.properties["shape_after_resampling"]
    assert resampled == (tolerance == "absent")

    true_target = normalize(resample_like_case(reference * case.keep, case.properties,
                                               order=plans["resampling"]["order"]), case.target_params)
    true_target = torch.from_numpy(true_target)[None, None]
    y0 = y0_from_target(true_target, unpad(case.condition, case.pads), task_plans)
    predictor.model.strategy = Oracle(F.pad(y0, [p for pair in reversed(case.pads) for p in pair]),
                                      predictor.sampler.schedule)
    with_projection = _psnr(reference, predictor.sample_case(case)[0])
    case.measurement = None                     # the final projection stays, the per-step one goes
    without_projection = _psnr(reference, predictor.sample_case(case)[0])
    print(f"tolerance {tolerance}: {with_projection:.2f} dB with, {without_projection:.2f} dB without per-step "
          "projection")
    if tolerance != "absent":
        assert abs(with_projection - without_projection) <= 0.5
    else:
        assert without_projection - with_projection > 0.5
