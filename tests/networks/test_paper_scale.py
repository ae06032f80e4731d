"""Paper scale on the meta device: experts 64 x 1-2-4-8 on 192 x 192 slices, ensembler 64-128-192-256 on
192 x 192 x 152 with the features of two experts; shapes and exact parameter counts (documentation/networks.md)."""
import numpy as np
import pytest
import torch
from tiny_plans import any_residual_statistics

from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.planning import count_parameters, network_for_task, plan_experiment

META = torch.device("meta")
VOLUME = (192, 192, 152)
TASKS = {"sr": {"target": 3, "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}},
         "both": {"target": 3, "inputs": [1], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}}}
# the parameter counts documentation/networks.md quotes (task "both": 14 expert inputs = y_t + 2 conditions x 5
# slices + 3 positions; 5 ensembler inputs)
EXPECTED = {("2d_axial", "both"): 63_334_785, ("2d_axial", "sr"): 63_331_905,
            ("3d_ensembler", "both"): 59_041_282, ("3d_ensembler_small", "both"): 11_889_090}


def brats_fingerprint():
    """10 BraTS-like cases: brains about 180 x 188 x 148 at 1 mm (as tests/planning/test_planner.py)."""
    rng = np.random.default_rng(0)
    shapes = [[int(v) for v in np.array([180, 188, 148]) + rng.integers(-4, 5, 3)] for _ in range(10)]
    intensity = {"mean": 300.0, "std": 100.0, "median": 290.0, "min": 0.0, "max": 1200.0,
                 "percentile_00_5": 20.0, "percentile_99_5": 820.0}
    return {"case_identifiers": [f"case_{i:03d}" for i in range(10)], "spacings": [[1.0, 1.0, 1.0]] * 10,
            "shapes_before_crop": [[240, 240, 155]] * 10, "shapes_after_crop": shapes,
            "channel_names": {str(i): f"c{i}" for i in range(4)},
            "foreground_intensity_properties_per_channel": {str(i): dict(intensity) for i in range(4)},
            "residual_statistics_per_channel": any_residual_statistics(4)}


@pytest.fixture(scope="module")
def brats_plans():
    return plan_experiment(brats_fingerprint(), TASKS, {0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"},
                           "Dataset500_BraTS", 40.0)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("task", ["both", "sr"])
def test_paper_expert_builds_with_correct_shapes(brats_plans, task):
    network = network_for_task(brats_plans, "2d_axial", task)
    assert network["channels"] == [64, 128, 256, 512] and network["num_res_blocks"] == 2
    assert network["attention_levels"] == [3] and network["time_embed_dim"] == 256
    with META:
        expert = build_expert(network)
        eps, features = expert(torch.empty(4, network["in_channels"], 192, 192), torch.zeros(4, dtype=torch.long))
    assert eps.shape == (4, 1, 192, 192) and eps.device == META
    assert [tuple(f.shape) for f in features] == [(4, 64, 192, 192), (4, 128, 96, 96), (4, 256, 48, 48),
                                                 (4, 512, 24, 24)]
    assert parameters(expert) == count_parameters(network) == EXPECTED[("2d_axial", task)]


@pytest.mark.parametrize("configuration", ["3d_ensembler", "3d_ensembler_small"])
def test_paper_ensembler_builds_with_correct_shapes(brats_plans, configuration):
    network = network_for_task(brats_plans, configuration, "both")
    plan = brats_plans["configurations"][configuration]
    experts = plan["experts"]
    expected_channels = [64, 128, 192, 256] if configuration == "3d_ensembler" else [32, 64, 64, 128]
    assert network["channels"] == expected_channels and experts == ["2d_axial", "2d_sagittal"]
    assert len(network["feature_injection"]) == (8 if configuration == "3d_ensembler" else 0)
    with META:
        model = Ensembler(network, experts, ["epsilon_residual"] * 2)
        n_cond = network["in_channels"] - 1 - len(experts)               # T1ce and the degraded FLAIR
        volume = [torch.empty(1, n_cond, *VOLUME)] + [torch.empty(1, 1, *VOLUME) for _ in range(3)]  # y_t, eps
        features = {}
        for name in experts:
            axis = brats_plans["configurations"][name]["slice_axis"]
            channels = brats_plans["configurations"][name]["network"]["channels"]
            features[name] = [torch.empty(1, c, *(s if i == axis else s // 2 ** level for i, s in enumerate(VOLUME)))
                              for level, c in enumerate(channels)]
        t = torch.zeros(1, dtype=torch.long)
        eps_hat = model(volume[0], volume[1], volume[2:], t, features)
        weights, residual = model.weights_and_residual(volume[0], volume[1], volume[2:], t, features)
    assert eps_hat.shape == (1, 1, *VOLUME) and eps_hat.device == META
    assert weights.shape == (1, 2, *VOLUME) and residual.shape == (1, 1, *VOLUME)
    assert parameters(model) == count_parameters(network) == EXPECTED[(configuration, "both")]
