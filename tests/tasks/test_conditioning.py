"""Task conditioning: renormalisation for a task, the SR condition up(A(target)), parametrisations and inverses."""
import numpy as np
import pytest
import torch

from diffens_auto.operators import AvgPoolSR, degrade_image, operator_for, upsample_to_grid
from diffens_auto.preprocessing.storage import load_case
from diffens_auto.tasks.conditioning import (MASK_TOLERANCE, condition_background, condition_mask, make_condition,
                                             target_from_y0, task_background, task_volumes)


def _raw(x, params):
    """Undo a normalisation by hand, in float64."""
    return np.asarray(x, dtype=np.float64) * params["half_range"] + params["center"]


@pytest.mark.parametrize("task", ["sr", "mt", "both"])
def test_task_volumes_renormalise_to_the_tasks_parameters(demo_data, task):
    case = demo_data.train[0]
    data, mask, properties = load_case(demo_data.data_folder, case, mmap=True)
    plans, task_plans = demo_data.plans, demo_data.plans["tasks"][task]
    target, inputs = task_volumes(data, properties, plans, task)
    data = data[...]
    assert target.dtype == np.float32 and target.shape == (1,) + data.shape[1:]
    assert inputs.shape == (len(task_plans["inputs"]),) + data.shape[1:]

    ch = str(task_plans["target"])
    stored = properties["normalization"][ch]["case"]
    if task_plans["target_normalization"] == "dataset":
        wanted = plans["normalization"]["dataset"][ch]
    else:
        wanted = properties["normalization"][ch]["degraded"][task_plans["target_normalization"].split(":")[1]]
    # the same raw intensities, expressed with the task's parameters: x_task = (raw - center) / half_range
    expected = (_raw(data[int(ch)], stored) - wanted["center"]) / wanted["half_range"]
    np.testing.assert_allclose(target[0], expected, atol=1e-5)
    for k, c in enumerate(task_plans["inputs"]):
        np.testing.assert_array_equal(inputs[k], data[c])   # inputs keep their stored "case" normalisation

    background = task_background(properties, plans, task)
    outside = np.asarray(mask[...]) == 0
    assert outside.any()
    np.testing.assert_allclose(target[0][outside], background[0], atol=1e-5)
    np.testing.assert_allclose(background[0], -wanted["center"] / wanted["half_range"], rtol=1e-6)
    for k in range(inputs.shape[0]):
        np.testing.assert_allclose(inputs[k][outside], background[1 + k], atol=1e-5)


def test_task_volumes_take_torch_tensors(demo_data):
    data, _, properties = load_case(demo_data.data_folder, demo_data.train[0], mmap=False)
    target_np, inputs_np = task_volumes(data, properties, demo_data.plans, "both")
    target_t, inputs_t = task_volumes(torch.from_numpy(data), properties, demo_data.plans, "both")
    torch.testing.assert_close(target_t, torch.from_numpy(target_np))
    torch.testing.assert_close(inputs_t, torch.from_numpy(inputs_np))


def _volumes(n_inputs, shape=(8, 12, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, 1) + shape, generator=g), torch.randn((2, n_inputs) + shape, generator=g)


def test_sr_condition_is_the_upsampled_degraded_target(plans):
    task_plans = plans["tasks"]["sr"]
    target, inputs = _volumes(0)
    condition, y0 = make_condition(target, inputs, task_plans)
    operator = operator_for(task_plans["degradation"])
    expected = upsample_to_grid(operator.A(target), operator.factor, target.shape[2:])
    assert condition.shape == target.shape
    torch.testing.assert_close(condition, expected, rtol=0, atol=0)
    torch.testing.assert_close(y0, (target - expected) * task_plans["residual_scale"])   # epsilon_residual
    torch.testing.assert_close(target_from_y0(y0, condition, task_plans), target)
    # plans made before the planned scale keep the public code's (target - up(A target)) / 2
    legacy = {k: v for k, v in task_plans.items() if k != "residual_scale"}
    _, y0_legacy = make_condition(target, inputs, legacy)
    torch.testing.assert_close(y0_legacy, (target - expected) / 2)
    torch.testing.assert_close(target_from_y0(y0_legacy, condition, legacy), target)
    # the same block means as degrade_image, which makes the low-resolution inputs at prediction time
    props = {"shape": list(target.shape[2:]), "spacing": [1.0] * 3, "origin": [0.0] * 3,
             "direction": np.eye(3).tolist()}
    lowres, _ = degrade_image(target[0, 0].numpy(), props, task_plans["degradation"])
    torch.testing.assert_close(operator.A(target)[0, 0], torch.from_numpy(lowres))


def test_mt_condition_is_the_inputs_and_y0_the_target(plans):
    task_plans = plans["tasks"]["mt"]
    target, inputs = _volumes(1)
    condition, y0 = make_condition(target, inputs, task_plans)
    torch.testing.assert_close(condition, inputs, rtol=0, atol=0)
    torch.testing.assert_close(y0, target, rtol=0, atol=0)
    assert y0.data_ptr() != target.data_ptr()


def test_both_condition_is_inputs_then_degraded_target(plans):
    task_plans = plans["tasks"]["both"]
    target, inputs = _volumes(1)
    condition, _ = make_condition(target, inputs, task_plans)
    assert condition.shape[1] == len(task_plans["condition_channels"]) == 2
    torch.testing.assert_close(condition[:, :1], inputs, rtol=0, atol=0)
    operator = operator_for(task_plans["degradation"])
    torch.testing.assert_close(condition[:, 1:], upsample_to_grid(operator.A(target), operator.factor, (8, 12, 8)))


@pytest.mark.parametrize("task", ["sr", "mt", "both"])
@pytest.mark.parametrize("parametrization", ["epsilon_target", "epsilon_residual"])
def test_target_from_y0_inverts_make_condition(plans, task, parametrization):
    task_plans = dict(plans["tasks"][task], parametrization=parametrization)
    target, inputs = _volumes(len(task_plans["inputs"]))
    if parametrization == "epsilon_residual" and not task_plans["degradation"]:
        with pytest.raises(ValueError, match="needs a degradation"):
            make_condition(target, inputs, task_plans)
        return
    condition, y0 = make_condition(target, inputs, task_plans)
    torch.testing.assert_close(target_from_y0(y0, condition, task_plans), target, rtol=0, atol=1e-6)


def test_condition_channel_count_is_checked(plans):
    target, inputs = _volumes(2)
    with pytest.raises(ValueError, match="condition channels"):
        make_condition(target, inputs, plans["tasks"]["both"])


def test_diffusion_for_task_takes_the_tasks_clip_and_truncated_start(plans):
    from diffens_auto.tasks.conditioning import diffusion_for_task
    plans = {**plans, "tasks": {**plans["tasks"], "sr": {**plans["tasks"]["sr"], "start_timestep": 200},
                                "mt": {**plans["tasks"]["mt"]}}}
    sr = diffusion_for_task(plans, "sr")
    assert sr["clip_x0"] == plans["tasks"]["sr"]["clip_x0"] and sr["start_timestep"] == 200
    assert diffusion_for_task(plans, "mt")["clip_x0"] == plans["diffusion"]["clip_x0"]     # no own bound
    assert "start_timestep" not in diffusion_for_task(plans, "mt")
    # no clipping in the plans stays no clipping
    unclipped = {**plans, "diffusion": {**plans["diffusion"], "clip_x0": False}}
    assert diffusion_for_task(unclipped, "sr")["clip_x0"] is False
    plans["tasks"]["mt"]["start_timestep"] = 100
    with pytest.raises(ValueError, match="Task 'mt': start_timestep starts sampling from y0 = 0.*Fix: remove"):
        diffusion_for_task(plans, "mt")


# ------------------------------------------------------------------ a reconstruction task: an unconditional prior

RECON = {"target": 0, "inputs": [], "degradation": {"type": "kspace", "mask": "poisson", "acceleration": 8.0,
                                                    "acs": 12, "slice_axis": 2, "noise_std": 0.0,
                                                    "mask_per_slice": False},
         "condition_channels": [], "parametrization": "epsilon_target", "prediction": "epsilon",
         "target_normalization": "degraded:kspace_poisson_8x_acs12_z", "input_normalization": "case"}


def test_a_kspace_task_has_no_condition_and_y0_is_its_target():
    from diffens_auto.tasks.conditioning import pooling, y0_from_target
    target, inputs = _volumes(0)
    condition, y0 = make_condition(target, inputs, RECON)
    assert condition.shape == (2, 0, 8, 12, 8) and pooling(RECON) is None
    torch.testing.assert_close(y0, target, rtol=0, atol=0)
    torch.testing.assert_close(y0_from_target(target, condition, RECON), target, rtol=0, atol=0)
    torch.testing.assert_close(target_from_y0(y0, condition, RECON), target, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs a degradation by average pooling.*or with a kspace one"):
        make_condition(target, inputs, dict(RECON, parametrization="epsilon_residual"))


def test_a_kspace_task_scales_its_target_by_the_stored_zero_filled_scale():
    properties = {"normalization": {"0": {"case": {"center": 100.0, "half_range": 50.0},
                                          "degraded": {"kspace_poisson_8x_acs12_z": {"center": 0.0,
                                                                                      "half_range": 400.0}}}}}
    plans = {"tasks": {"recon": RECON}, "normalization": {"dataset": {}}}
    stored = np.array([[[[-2.0, 0.0, 2.0]]]], dtype=np.float32)       # raw 0, 100, 200 in the "case" scale
    target, inputs = task_volumes(stored, properties, plans, "recon")
    np.testing.assert_allclose(target[0], [[[0.0, 0.25, 0.5]]], atol=1e-7)   # raw / 400: no offset
    assert inputs.shape == (0, 1, 1, 3)
    assert task_background(properties, plans, "recon").tolist() == [0.0]     # raw 0 stays 0 (no spike at DC)


def test_condition_mask_marks_voxels_off_their_channels_background():
    condition = torch.full((1, 2, 2, 2, 1), -1.0)
    condition[0, 1] = 0.5                                   # channel 1's background is 0.5
    condition[0, 0, 0, 0, 0] = -1.0 + 2 * MASK_TOLERANCE    # off channel 0's background
    condition[0, 1, 1, 1, 0] = 0.5 + MASK_TOLERANCE / 2     # within float rounding of channel 1's
    condition[0, 1, 0, 1, 0] = 0.0                          # off channel 1's
    mask = condition_mask(condition, [-1.0, 0.5])
    assert mask.shape == (1, 1, 2, 2, 1) and mask.dtype == condition.dtype
    assert mask[0, 0, ..., 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="2 condition channels but 1 background"):
        condition_mask(condition, [-1.0])


def test_condition_background_is_in_condition_order():
    background = [-0.9, -1.1, -1.3]       # target, then the inputs
    sr_with_input = {"degradation": {"type": "avgpool", "factor": [2, 2, 2]}}
    assert condition_background(background, sr_with_input) == pytest.approx([-1.1, -1.3, -0.9])
    assert condition_background(background, {"degradation": None}) == pytest.approx([-1.1, -1.3])
    kspace = {"degradation": {"type": "kspace", "mask": "poisson", "acceleration": 4}}
    assert condition_background(background[:1], kspace) == []
