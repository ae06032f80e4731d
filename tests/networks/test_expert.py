"""2D experts: built from the tiny plans, noise and features shaped as the plans' feature_injection says."""
import pytest
import torch

from diffens_auto.networks import build_expert, expert_input_channels
from diffens_auto.planning import count_parameters, network_for_task
from diffens_auto.planning.topology import expert_in_channels


def slices(volume: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B * S, C, a, b): every slice along spatial `axis`, the other axes in order."""
    moved = volume.movedim(2 + axis, 1)
    b, s = moved.shape[:2]
    return moved.reshape(b * s, *moved.shape[2:])


def restack(per_slice: torch.Tensor, axis: int, batch: int) -> torch.Tensor:
    """Inverse of `slices` for per-slice maps (B * S, C, a, b) -> (B, C, ...) with the slice axis at 2 + axis."""
    stacked = per_slice.reshape(batch, -1, *per_slice.shape[1:])       # (B, S, C, a, b)
    return stacked.movedim(1, 2 + axis)


@pytest.mark.parametrize("configuration", ["2d_axial", "2d_coronal", "2d_sagittal"])
def test_expert_noise_and_features_match_the_plans(tiny_plans, configuration):
    plan = tiny_plans["configurations"][configuration]
    network = network_for_task(tiny_plans, configuration, "mt")
    expert = build_expert(network).eval()
    assert sum(p.numel() for p in expert.parameters()) == count_parameters(network)
    ensembler = tiny_plans["configurations"]["3d_ensembler"]
    volume_shape = ensembler["fine_tune_shape"]
    axis = plan["slice_axis"]
    volume = torch.randn(1, network["in_channels"], *volume_shape)
    x = slices(volume, axis)
    with torch.no_grad():
        eps, features = expert(x, torch.full((x.shape[0],), 500))
    assert eps.shape == (x.shape[0], 1, *x.shape[2:])
    assert list(x.shape[2:]) == plan["patch_size"]          # a patch is one whole slice of the crop
    for entry in ensembler["network"]["feature_injection"]:
        if entry["expert"] != configuration:
            continue
        level = entry["expert_level"]
        assert list(features[level].shape[1:]) == [entry["in_channels"], *entry["expert_feature_shape"]]
        assert list(restack(features[level], axis, 1).shape[2:]) == entry["restacked_shape"]


def test_planning_uses_the_networks_input_channel_rule():
    assert expert_in_channels is expert_input_channels           # one rule, planning imports the networks'
    for (conditions, context, positions), expected in [((1, 0, 0), 2), ((2, 2, 3), 14), ((1, 1, 0), 4)]:
        assert expert_input_channels(conditions, context, positions) == expected


def test_expert_with_context_and_positions(tiny_plans):
    network = {**network_for_task(tiny_plans, "2d_axial", "mt"), "context_slices": 2, "position_channels": 3,
               "mask_channels": 0, "in_channels": expert_input_channels(1, 2, 3)}
    eps, _ = build_expert(network)(torch.randn(2, 9, 32, 32), torch.tensor([1, 2]))
    assert eps.shape == (2, 1, 32, 32)


def test_build_expert_refuses_inconsistent_dicts(tiny_plans):
    network = network_for_task(tiny_plans, "2d_axial", "mt")
    with pytest.raises(ValueError, match="spatial_dims"):
        build_expert({**network, "spatial_dims": 3})
    with pytest.raises(ValueError, match="out_channels"):
        build_expert({**network, "out_channels": 2})
    with pytest.raises(ValueError, match="in_channels"):
        build_expert({**network, "context_slices": 1, "in_channels": 3})
    with pytest.raises(ValueError, match="returns_features"):
        build_expert({**network, "returns_features": False})
    assert network["returns_features"] is True                   # the plans' value, informational
    build_expert({key: value for key, value in network.items() if key != "returns_features"})


def test_bfloat16_expert_runs_on_cpu(tiny_plans):
    network = network_for_task(tiny_plans, "2d_axial", "mt")
    expert = build_expert(network).to(torch.bfloat16).eval()
    with torch.no_grad():
        eps, features = expert(torch.randn(2, network["in_channels"], 32, 32, dtype=torch.bfloat16),
                               torch.tensor([0, 999]))
    assert eps.dtype == torch.bfloat16 and all(f.dtype == torch.bfloat16 for f in features)


@pytest.mark.parametrize("position_channels", [0, 3])
def test_an_unconditional_expert_takes_y_t_and_its_positions_alone(tiny_plans, position_channels):
    network = dict(network_for_task(tiny_plans, "2d_axial", "mt"), position_channels=position_channels,
                   mask_channels=0, in_channels=expert_input_channels(0, 2, position_channels))
    assert network["in_channels"] == 1 + position_channels          # no condition: its context adds nothing
    expert = build_expert(network).eval()
    x = torch.randn(3, network["in_channels"], *tiny_plans["configurations"]["2d_axial"]["patch_size"])
    with torch.no_grad():
        eps, features = expert(x, torch.full((3,), 10))
    assert eps.shape == (3, 1, *x.shape[2:]) and torch.isfinite(eps).all() and len(features) == 3
