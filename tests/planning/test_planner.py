"""plan_experiment end to end: BraTS-like budgets, divisibility, anisotropy, the tiny preset, errors."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_plans import any_residual_statistics

from diffens_auto.planning import (PlanningError, UnknownPresetError, estimate_inference_memory,
                                   estimate_training_memory, network_for_task, plan_experiment, plans_problems,
                                   validate_plans)
from diffens_auto.networks import build_expert
from diffens_auto.planning.plans_schema import PlansError
from diffens_auto.planning.task_sections import KSPACE_ADAPTATION, POOLED_ADAPTATION

BRATS_CHANNELS = {0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"}
BRATS_TASKS = {
    "sr": {"target": 3, "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}},
    "mt": {"target": 3, "inputs": [1], "degradation": None},
    "both": {"target": 3, "inputs": [1], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}},
}


def fingerprint(shapes, spacings, num_channels):
    """A fingerprint as the fingerprint stage writes it."""
    n = len(shapes)
    intensity = {"mean": 300.0, "std": 100.0, "median": 290.0, "min": 0.0, "max": 1200.0,
                 "percentile_00_5": 20.0, "percentile_99_5": 820.0}
    return {"case_identifiers": [f"case_{i:03d}" for i in range(n)],
            "spacings": [list(map(float, s)) for s in spacings],
            "shapes_before_crop": [[240, 240, 155]] * n,
            "shapes_after_crop": [list(map(int, s)) for s in shapes],
            "channel_names": {str(i): f"c{i}" for i in range(num_channels)},
            "foreground_intensity_properties_per_channel": {str(i): dict(intensity) for i in range(num_channels)},
            "residual_statistics_per_channel": any_residual_statistics(num_channels)}


def brats_fingerprint(num_channels=4, seed=0):
    """10 BraTS-like cases: 240x240x155 at 1 mm, brain boxes around 180x188x148."""
    rng = np.random.default_rng(seed)
    shapes = [np.array([180, 188, 148]) + rng.integers(-4, 5, 3) for _ in range(10)]
    return fingerprint(shapes, [[1.0, 1.0, 1.0]] * 10, num_channels)


@pytest.fixture(scope="module")
def brats_40():
    return plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", 40.0)


@pytest.fixture(scope="module")
def brats_8():
    return plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", 8.0)


def all_estimates(plans):
    """Recompute every configuration's training and inference estimate from the plans alone."""
    configurations = plans["configurations"]
    workspace = plans["memory_model"]["workspace_gb"]
    for name, configuration in configurations.items():
        experts = {e: configurations[e] for e in configuration.get("experts", [])}
        shapes = [configuration["patch_size"]] + ([configuration["fine_tune_shape"]]
                                                  if configuration["kind"] == "ensembler" else [])
        for shape in shapes:
            yield name, "training", estimate_training_memory(configuration, plans["dtype"], experts=experts,
                                                             shape=shape, workspace_gb=workspace).total_gb
        yield name, "inference", estimate_inference_memory(
            configuration, plans["dtype"], volume_shape=plans["crop_size"], experts=experts,
            slice_batch_size=plans["inference"]["slice_batch_size"], workspace_gb=workspace).total_gb


def test_brats_40gb_plans_the_paper_setup(brats_40):
    crop = brats_40["crop_size"]
    assert all(abs(c - p) <= 8 for c, p in zip(crop, (192, 192, 152)))
    shapes = np.array(brats_fingerprint()["shapes_after_crop"])
    assert all(crop >= shapes.max(axis=0))
    assert brats_40["target_spacing"] == [1.0, 1.0, 1.0]
    for name in ("2d_axial", "2d_coronal", "2d_sagittal"):
        expert = brats_40["configurations"][name]
        assert len(expert["network"]["channels"]) >= 4
        assert expert["batch_size"] >= 4
        assert expert["memory_estimate_gb"] <= 40
    ensembler = brats_40["configurations"]["3d_ensembler"]
    assert ensembler["patch_wise"] is False
    assert ensembler["fine_tune_shape"] == crop
    assert ensembler["batch_size"] == 1
    assert ensembler["network"]["channels"] == [64, 128, 192, 256]
    assert ensembler["experts"] == ["2d_axial", "2d_sagittal"]
    assert ensembler["memory_estimate_gb"] <= 40
    assert ensembler["inference_memory_estimate_gb"] <= 40
    for name, kind, gb in all_estimates(brats_40):
        assert gb <= 40 + 1e-9, (name, kind, gb)


def test_brats_8gb_fits_every_estimate_and_says_how(brats_8):
    for name, kind, gb in all_estimates(brats_8):
        assert gb <= 8 + 1e-9, (name, kind, gb)
    for configuration in brats_8["configurations"].values():
        assert configuration["memory_estimate_gb"] <= 8
        assert configuration["inference_memory_estimate_gb"] <= 8
    ensembler = brats_8["configurations"]["3d_ensembler"]
    assert ensembler["patch_wise"] is True
    assert ensembler["fine_tune_shape"] != brats_8["crop_size"]
    assert any("patch_wise" in step for step in ensembler["memory_fallbacks"])
    assert all(f <= c for f, c in zip(ensembler["fine_tune_shape"], brats_8["crop_size"]))
    assert all(p <= f for p, f in zip(ensembler["patch_size"], ensembler["fine_tune_shape"]))


def test_shapes_are_divisible_by_stride_and_degradation_factor(brats_40, brats_8):
    for plans in (brats_40, brats_8):
        stride = 2 ** (plans["num_levels"] - 1)
        for c in plans["crop_size"]:
            assert c % math.lcm(stride, 4) == 0
        for configuration in plans["configurations"].values():
            if configuration["kind"] == "ensembler":
                for shape in (configuration["patch_size"], configuration["fine_tune_shape"]):
                    assert all(s % math.lcm(stride, 4) == 0 for s in shape)


def test_per_task_channels_and_task_section(brats_40):
    configurations = brats_40["configurations"]
    # y_t + each condition with 2 neighbouring slices on either side + 3 position channels (+ the non-zero mask
    # for mt, whose condition has no pooled target)
    assert configurations["2d_axial"]["network"]["context_slices"] == 2
    assert configurations["2d_axial"]["network"]["position_channels"] == 3
    assert configurations["2d_axial"]["in_channels_per_task"] == {"sr": 9, "mt": 10, "both": 14}
    assert configurations["2d_axial"]["mask_channels_per_task"] == {"sr": 0, "mt": 1, "both": 0}
    assert network_for_task(brats_40, "2d_axial", "mt")["mask_channels"] == 1
    assert network_for_task(brats_40, "2d_axial", "both")["mask_channels"] == 0
    assert configurations["3d_ensembler"]["in_channels_per_task"] == {"sr": 4, "mt": 4, "both": 5}
    assert configurations["3d_ensembler"]["network"]["out_channels"] == 2   # one zero-sum weight map + residual
    assert network_for_task(brats_40, "2d_sagittal", "both")["in_channels"] == 14
    assert network_for_task(brats_40, "2d_sagittal", "sr")["in_channels"] == 9
    both = dict(brats_40["tasks"]["both"])
    assert both.pop("adaptation") == POOLED_ADAPTATION      # SR tasks adapt to their pooled measurement
    assert "adaptation" not in brats_40["tasks"]["mt"]      # no measurement: nothing to adapt to
    assert both == {
        "target": 3, "target_name": "FLAIR", "inputs": [1], "input_names": ["T1ce"],
        "degradation": {"type": "avgpool", "factor": [4, 4, 4]}, "condition_channels": [1, 3],
        "parametrization": "epsilon_residual", "target_normalization": "degraded:avgpool_4x4x4", "input_normalization": "case",
        "ensembler_lambda": 1.0, "residual_scale": 4.0, "clip_x0": 6.0,   # 1 / rms 0.25; abs_max 1.5 x 4
        "prediction": "v"}
    mt = brats_40["tasks"]["mt"]
    assert (mt["parametrization"], mt["target_normalization"], mt["condition_channels"]) == \
        ("epsilon_target", "dataset", [1])


def test_plans_top_level_keys_and_json(brats_40):
    assert plans_problems(brats_40) == []
    assert brats_40["plans_name"] == brats_40["data_identifier"] == "diffensPlans"
    assert brats_40["preset"] == "default" and brats_40["dtype"] == "bfloat16"
    assert brats_40["gpu_memory_target_gb"] == 40.0
    assert brats_40["resampling"] == {"order": 3, "order_z": 0, "anisotropy_threshold": 3.0}
    assert brats_40["normalization"]["dataset"]["3"] == {"center": 420.0, "half_range": 400.0}
    assert brats_40["diffusion"] == {
        "num_train_steps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "sampler": "ddpm",
        "eta": 0.0, "num_inference_steps": 50, "timestep_spacing": "leading", "ddpm_timestep_spacing": "guided",
        "ddpm_variance": "fixed_small", "clip_x0": True, "consistency_projection": True}
    assert brats_40["training"]["expert"]["lr"] == 5e-5 and brats_40["training"]["ensembler"]["lr"] == 1e-4
    assert brats_40["inference"]["sliding_window_overlap"] == 0.5
    assert json.loads(json.dumps(brats_40)) == brats_40


def test_single_channel_sr_dataset():
    plans = plan_experiment(brats_fingerprint(num_channels=1), {"sr": BRATS_TASKS["sr"] | {"target": 0}},
                            {0: "FLAIR"}, "Dataset501_FLAIR", 40.0)
    assert plans["configurations"]["2d_axial"]["in_channels_per_task"] == {"sr": 9}
    assert list(plans["normalization"]["dataset"]) == ["0"]


def test_task_spec_objects_are_accepted():
    task = SimpleNamespace(target=0, inputs=(), degradation=SimpleNamespace(type="avgpool", factor=(2, 2, 2)))
    plans = plan_experiment(brats_fingerprint(num_channels=1), {"sr": task}, {"0": "FLAIR"}, "Dataset501_FLAIR",
                            40.0, preset="tiny")
    assert plans["tasks"]["sr"]["degradation"] == {"type": "avgpool", "factor": [2, 2, 2]}


def test_anisotropic_fingerprint():
    rng = np.random.default_rng(3)
    spacings = [[0.6, 0.6, z] for z in rng.choice([3.0, 3.6, 4.0, 4.4], size=12)]
    shapes = [[256 + int(rng.integers(-8, 8)), 256 + int(rng.integers(-8, 8)), 24] for _ in range(12)]
    fp = fingerprint(shapes, spacings, 1)
    plans = plan_experiment(fp, {"sr": {"target": 0, "inputs": [], "degradation": {"type": "avgpool",
                                                                                 "factor": [2, 2, 1]}}},
                            {0: "T2"}, "Dataset502_Prostate", 80.0)
    z = np.array(spacings)[:, 2]
    assert plans["target_spacing"][:2] == [0.6, 0.6]
    assert plans["target_spacing"][2] == pytest.approx(np.percentile(z, 10))
    assert plans["target_spacing"][2] < np.median(z)
    stride = 2 ** (plans["num_levels"] - 1)
    extent_z = max(s[2] * sp[2] for s, sp in zip(shapes, spacings)) / plans["target_spacing"][2]
    assert plans["crop_size"][2] >= extent_z and plans["crop_size"][2] % stride == 0
    assert extent_z / stride >= 8                 # levels were reduced to keep the deepest map >= 8 voxels


def test_tiny_preset_on_a_demo_like_dataset():
    rng = np.random.default_rng(7)
    shapes = [np.array([40, 44, 40]) + rng.integers(-3, 1, 3) for _ in range(8)]
    fp = fingerprint(shapes, [[1.5, 1.5, 1.5]] * 8, 2)
    tasks = {"sr": {"target": 1, "inputs": [], "degradation": {"type": "avgpool", "factor": [2, 2, 2]}},
             "mt": {"target": 1, "inputs": [0]}}
    plans = plan_experiment(fp, tasks, {0: "T1", 1: "FLAIR"}, "Dataset900_DemoBrain", preset="tiny")
    assert plans["plans_name"] == plans["data_identifier"] == "diffensPlans_tiny"
    assert plans["dtype"] == "float32"
    assert plans["diffusion"]["num_inference_steps"] < 50
    assert plans["diffusion"]["num_train_steps"] == 1000
    assert plans["crop_size"] == [40, 44, 40]
    assert plans_problems(plans) == []
    for configuration in plans["configurations"].values():
        assert max(configuration["network"]["channels"]) <= 32
        assert configuration["network"]["num_res_blocks"] == 1
        assert configuration["memory_estimate_gb"] < 1
    ensembler = plans["configurations"]["3d_ensembler"]
    assert ensembler["patch_wise"] is False and max(ensembler["patch_size"]) <= 32
    assert plans["training"]["expert"]["num_epochs"] <= 5


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownPresetError, match="default, tiny"):
        plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", preset="huge")


def test_a_budget_nothing_fits_is_a_clear_error():
    with pytest.raises(PlanningError, match=r"1 GB.*smallest estimate is \d+\.\d\d GB"):
        plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", 1.0)


def test_a_task_on_an_unknown_channel_is_a_clear_error():
    with pytest.raises(PlanningError, match="channel"):
        plan_experiment(brats_fingerprint(), {"sr": {"target": 7, "inputs": []}}, BRATS_CHANNELS, "D", 40.0)


def test_validate_plans_names_missing_entries(brats_40):
    broken = json.loads(json.dumps(brats_40))
    del broken["crop_size"]
    del broken["configurations"]["3d_ensembler"]["fine_tune_shape"]
    with pytest.raises(PlansError, match="crop_size.*fine_tune_shape"):
        validate_plans(broken)


def test_context_slices_and_position_channels_widen_the_expert_input(monkeypatch):
    from dataclasses import replace

    from diffens_auto.planning import presets

    madm = replace(presets.PRESETS["tiny"], context_slices=2, position_channels=3)
    monkeypatch.setitem(presets.PRESETS, "tiny", madm)
    plans = plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", 40.0, preset="tiny")
    expert = plans["configurations"]["2d_axial"]
    # noisy target + every condition channel with 2 neighbours on each side + 3 position channels
    assert expert["in_channels_per_task"] == {"sr": 1 + 5 + 3, "mt": 1 + 5 + 3 + 1, "both": 1 + 10 + 3}
    assert expert["network"]["in_channels"] == 14
    assert expert["network"]["context_slices"] == 2 and expert["network"]["position_channels"] == 3
    assert plans["configurations"]["3d_ensembler"]["in_channels_per_task"]["both"] == 5


def test_the_mask_channel_is_planned_for_conditions_without_a_pooled_target_only(monkeypatch):
    from dataclasses import replace

    from diffens_auto.planning import presets

    plans = plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", 40.0, preset="tiny")
    context = 2 * presets.TINY.context_slices + 1
    expert = plans["configurations"]["2d_axial"]
    assert expert["in_channels_per_task"] == {"sr": 1 + context + 3, "mt": 1 + context + 3 + 1,
                                              "both": 1 + 2 * context + 3}
    # the network dict is the widest task's, and builds as it is
    assert expert["network"]["in_channels"] == 1 + 2 * context + 3 and expert["network"]["mask_channels"] == 0
    assert build_expert(expert["network"]) is not None
    # an unconditional prior has no condition to take a mask of
    fp = brats_fingerprint(num_channels=1)
    recon = plan_experiment(fp, {"recon": RECON}, {0: "T1"}, "D", 40.0, preset="tiny")
    assert recon["configurations"]["2d_axial"]["in_channels_per_task"] == {"recon": 1 + 3}
    assert network_for_task(recon, "2d_axial", "recon")["mask_channels"] == 0
    # a preset without it plans none
    monkeypatch.setitem(presets.PRESETS, "tiny", replace(presets.PRESETS["tiny"], mask_channels=0))
    plain = plan_experiment(brats_fingerprint(), BRATS_TASKS, BRATS_CHANNELS, "Dataset500_BraTS", 40.0, preset="tiny")
    assert plain["configurations"]["2d_axial"]["in_channels_per_task"]["mt"] == 1 + context + 3


def test_residual_scale_and_clip_come_from_the_measured_residual():
    tasks = {"sr": BRATS_TASKS["sr"], "mt": BRATS_TASKS["mt"]}
    fp = brats_fingerprint()
    fp["residual_statistics_per_channel"] = any_residual_statistics(4, rms=0.2366, abs_max=1.4519)
    plans = plan_experiment(fp, tasks, BRATS_CHANNELS, "Dataset500_BraTS", 40.0)
    assert plans["tasks"]["sr"]["residual_scale"] == 4.227   # 1 / 0.2366 = 4.2265, 4 significant digits
    assert plans["tasks"]["sr"]["clip_x0"] == pytest.approx(6.2)            # ceil(1.4519 x 4.227 = 6.137, to 0.1)
    assert "residual_scale" not in plans["tasks"]["mt"] and "clip_x0" not in plans["tasks"]["mt"]


def test_an_sr_task_without_measured_residual_is_refused_with_the_fix():
    fp = brats_fingerprint()
    del fp["residual_statistics_per_channel"]
    with pytest.raises(PlanningError, match="no residual statistics of channel 3 under avgpool_4x4x4.*re-run"):
        plan_experiment(fp, {"sr": BRATS_TASKS["sr"]}, BRATS_CHANNELS, "Dataset500_BraTS", 40.0)


# ------------------------------------------------------------------ a reconstruction (kspace) task


RECON = {"target": 0, "inputs": [], "degradation": {"type": "kspace", "mask": "poisson", "acceleration": 8,
                                                    "acs": 12, "slice_axis": 2}}
RECON_SECTION = {
    "target": 0, "target_name": "T1", "inputs": [], "input_names": [],
    "degradation": {"type": "kspace", "mask": "poisson", "acceleration": 8.0, "acs": 12, "slice_axis": 2,
                    "noise_std": 0.0, "mask_per_slice": False},
    "condition_channels": [], "parametrization": "epsilon_target", "prediction": "epsilon",
    "target_normalization": "degraded:kspace_poisson_8x_acs12_z", "input_normalization": "case",
    "ensembler_lambda": 1.0}
# how prediction samples it (D3IP.md): DDIM with DDS's eta from t' = 980, gamma 5 and 5 CG steps; the preset's steps
RECON_DDS = {"sampler": "ddim", "eta": 0.85, "eta_convention": "dds", "timestep_spacing": "linspace",
             "start_timestep": 980, "gamma": 5.0, "cg_steps": 5}


def _recon_section(steps: int) -> dict:
    return {**RECON_SECTION, "dds": {**RECON_DDS, "num_inference_steps": steps}, "adaptation": KSPACE_ADAPTATION}


def test_a_recon_task_plans_an_unconditional_prior_of_its_scaled_target():
    rng = np.random.default_rng(2)
    shapes = [np.array([40, 44, 36]) + rng.integers(-3, 1, 3) for _ in range(6)]
    fp = fingerprint(shapes, [[1.0, 1.0, 1.0]] * 6, 1)
    del fp["residual_statistics_per_channel"]          # a recon task needs no residual statistics
    plans = plan_experiment(fp, {"recon": RECON}, {0: "T1"}, "Dataset902_Recon", preset="tiny")
    assert plans["tasks"]["recon"] == _recon_section(10)   # no residual_scale, clip_x0 or start_timestep
    assert plans["inference"]["recon_spacing_tolerance"] == 0.25
    assert plans_problems(plans) == []
    # no block grid: the crop is a multiple of the network stride alone
    stride = 2 ** (plans["num_levels"] - 1)
    assert plans["crop_multiples"] == [stride] * 3 and plans["crop_size"] == [40, 44, 36]
    for name, configuration in plans["configurations"].items():
        in_channels = 1 + 0 + 3 if configuration["kind"] == "expert" else 0 + 1 + 2
        assert configuration["in_channels_per_task"] == {"recon": in_channels}
        assert network_for_task(plans, name, "recon")["in_channels"] == in_channels
        assert 0 < configuration["memory_estimate_gb"] < 1 and 0 < configuration["inference_memory_estimate_gb"] < 1
        breakdown = configuration["memory_estimate_breakdown"]
        assert all(math.isfinite(gb) for part in breakdown.values() for gb in part.values())
        # sampling holds the measurement and DDS's CG state over the crop
        assert breakdown["inference"]["measurement_buffers"] > 0 and "measurement_buffers" not in breakdown["training"]


def test_a_real_size_recon_task_plans_beside_the_sr_tasks_and_leaves_them_unchanged(brats_40):
    plans = plan_experiment(brats_fingerprint(), {**BRATS_TASKS, "recon": RECON}, BRATS_CHANNELS,
                            "Dataset500_BraTS", 40.0)
    assert plans_problems(plans) == []
    assert plans["tasks"]["recon"] == _recon_section(50)
    assert {name: plans["tasks"][name] for name in BRATS_TASKS} == brats_40["tasks"]
    assert plans["crop_size"] == brats_40["crop_size"] and plans["crop_multiples"] == brats_40["crop_multiples"]
    axial = plans["configurations"]["2d_axial"]
    assert axial["in_channels_per_task"] == {"sr": 9, "mt": 10, "both": 14, "recon": 4}
    assert plans["configurations"]["3d_ensembler"]["in_channels_per_task"]["recon"] == 3
    for name, configuration in plans["configurations"].items():
        reference = brats_40["configurations"][name]
        # the networks (sized for the largest task) and training estimates are those of the plans without it
        assert configuration["network"] == reference["network"]
        assert configuration["memory_estimate_gb"] == reference["memory_estimate_gb"]
        assert configuration["inference_memory_estimate_gb"] > reference["inference_memory_estimate_gb"]
        assert configuration["inference_memory_estimate_gb"] <= 40


def test_a_real_size_recon_dataset_fits_its_budget_in_every_estimate():
    fp = brats_fingerprint(num_channels=1)
    plans = plan_experiment(fp, {"recon": RECON}, {0: "T1"}, "Dataset502_Recon", 8.0)
    assert plans["tasks"]["recon"] == _recon_section(50)
    configurations, workspace = plans["configurations"], plans["memory_model"]["workspace_gb"]
    for name, configuration in configurations.items():
        experts = {e: configurations[e] for e in configuration.get("experts", [])}
        gb = estimate_inference_memory(configuration, plans["dtype"], volume_shape=plans["crop_size"], experts=experts,
                                       slice_batch_size=plans["inference"]["slice_batch_size"],
                                       workspace_gb=workspace, kspace=True).total_gb
        assert gb == pytest.approx(configuration["inference_memory_estimate_gb"], abs=1e-3) and gb <= 8
        assert configuration["memory_estimate_gb"] <= 8
        assert configuration["in_channels_per_task"]["recon"] == (4 if configuration["kind"] == "expert" else 3)


@pytest.mark.parametrize("change, message", [
    (lambda task: task["degradation"].update(acceleration=1), "field 'acceleration' is 1; it must be a finite "
                                                             "number > 1. Fix: correct it"),
    (lambda task: task["degradation"].update(mask="radial"), "field 'mask' is 'radial'; it must be one of"),
    (lambda task: task["degradation"].update(coils=8), r"unknown fields \['coils'\].*Fix: give exactly the fields"),
    (lambda task: task["degradation"].pop("acceleration"), r"lacks \['acceleration'\]"),
    (lambda task: task.update(inputs=[1]), r"lists inputs \[1\]. Fix: write \"inputs\": \[\]"),
    (lambda task: task["degradation"].update(type="blur"), "unknown degradation type 'blur'. Fix: use 'avgpool'"),
])
def test_a_malformed_recon_task_is_a_planning_error_naming_task_field_and_fix(change, message):
    task = json.loads(json.dumps(RECON))
    change(task)
    with pytest.raises(PlanningError, match="Task 'recon': .*" + message):
        plan_experiment(brats_fingerprint(), {"recon": task}, BRATS_CHANNELS, "Dataset500_BraTS", 40.0)


@pytest.mark.parametrize("edit, problem", [
    (lambda task: task.update(condition_channels=[0]), "its experts are unconditional priors"),
    (lambda task: task.update(parametrization="epsilon_residual"), "needs 'epsilon_target'"),
    (lambda task: task.update(target_normalization="dataset"), "kspace_poisson_8x_acs12_z"),
    (lambda task: task.update(residual_scale=4.0), "'residual_scale', which only an SR residual has"),
    (lambda task: task["degradation"].pop("mask"), r"kspace degradation without \['mask'\]"),
    (lambda task: task["degradation"].update(slice_axis="z"), "malformed kspace degradation"),
])
def test_validate_plans_refuses_a_recon_task_edited_into_something_else(edit, problem):
    plans = plan_experiment(brats_fingerprint(num_channels=1), {"recon": RECON}, {0: "T1"}, "D", 40.0, preset="tiny")
    edit(plans["tasks"]["recon"])
    with pytest.raises(PlansError, match=f"task 'recon'.*{problem}"):
        validate_plans(plans)
