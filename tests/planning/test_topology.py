"""Target spacing, crop size, levels and feature injection geometry."""
import pytest

from diffens_auto.planning.presets import get_preset
from diffens_auto.planning.topology import (axis_multiples, choose_num_levels, ensembler_network, expert_network,
                                            extent_at_spacing, feature_injection, norm_groups, round_up,
                                            scaled_channels, target_spacing_for)


def test_isotropic_target_spacing_is_the_median():
    spacings = [[1.0, 1.0, 1.0], [0.9, 1.1, 1.2], [1.2, 0.8, 1.0]]
    shapes = [[100, 100, 100]] * 3
    assert target_spacing_for(spacings, shapes, 3.0) == pytest.approx([1.0, 1.0, 1.0])


def test_thick_slices_with_few_voxels_use_the_10th_percentile():
    spacings = [[0.7, 0.7, z] for z in (3.0, 3.5, 4.0, 4.0, 4.5, 5.0, 5.0, 5.0, 6.0, 6.0)]
    shapes = [[320, 320, 24]] * 10
    target = target_spacing_for(spacings, shapes, 3.0)
    assert target[:2] == pytest.approx([0.7, 0.7])
    assert target[2] == pytest.approx(3.45)   # 10th percentile, not the median 4.75


def test_thick_slices_on_a_long_axis_keep_the_median():
    spacings = [[0.7, 0.7, z] for z in (3.0, 4.0, 5.0)]
    shapes = [[100, 100, 200]] * 3              # many slices: the axis is not short
    assert target_spacing_for(spacings, shapes, 3.0)[2] == pytest.approx(4.0)


def test_percentile_is_never_finer_than_in_plane():
    spacings = [[2.0, 2.0, z] for z in [1.0] * 2 + [8.0] * 8]
    shapes = [[200, 200, 10]] * 10
    assert target_spacing_for(spacings, shapes, 3.0)[2] == pytest.approx(2.0)


def test_crop_covers_the_largest_box_and_respects_multiples():
    shapes = [[100, 90, 50], [96, 101, 47]]
    spacings = [[1.0, 1.0, 2.0], [1.0, 1.0, 2.2]]
    extent = extent_at_spacing(shapes, spacings, [1.0, 1.0, 1.0])
    assert extent == pytest.approx([100, 101, 103.4])
    multiples = axis_multiples(8, {"sr": {"degradation": {"type": "avgpool", "factor": [4, 4, 3]}}, "mt": {}})
    assert multiples == [8, 8, 24]
    assert round_up(extent, multiples) == [104, 104, 120]
    assert round_up([96.0000001, 8, 0.5], [8, 8, 8]) == [96, 8, 8]


def test_levels_shrink_for_small_crops():
    assert choose_num_levels([192, 192, 152], 4, 8) == 4
    assert choose_num_levels([192, 192, 40], 4, 8) == 3
    assert choose_num_levels([192, 192, 12], 4, 8) == 1
    assert choose_num_levels([40, 44, 40], 3, 4) == 3


def test_channel_scaling_keeps_groupnorm_valid():
    assert scaled_channels(64, (1, 2, 3, 4), 4, 1.0, 16) == [64, 128, 192, 256]
    assert scaled_channels(64, (1, 2, 3, 4), 4, 0.5, 16) == [32, 64, 96, 128]
    assert scaled_channels(32, (1, 2, 2, 4), 3, 0.25, 16) == [16, 16, 16]
    assert norm_groups([64, 128, 192, 256], 32) == 32
    assert norm_groups([16, 32, 32, 64], 32) == 16


def test_feature_injection_aligns_expert_and_ensembler_levels():
    preset = get_preset("default")
    crop = [184, 192, 152]
    experts = {}
    for name, axis in (("2d_axial", 2), ("2d_coronal", 1), ("2d_sagittal", 0)):
        plane = [s for i, s in enumerate(crop) if i != axis]
        experts[name] = {"slice_axis": axis, "network": expert_network(preset, plane, 4, 2)}
    ensembler = ensembler_network(preset, crop, 4, 5, 3, small=False)
    entries = feature_injection(experts, ensembler, crop)
    assert len(entries) == 3 * 4
    for entry in entries:
        level, axis = entry["expert_level"], entry["stack_axis"]
        assert entry["ensembler_level"] == level
        in_plane = [i for i in range(3) if i != axis]
        # the expert's level-l map of one slice equals the ensembler's level-l grid on the in-plane axes
        assert entry["expert_feature_shape"] == [entry["ensembler_shape"][i] for i in in_plane]
        assert entry["restacked_shape"][axis] == crop[axis]
        # kernel = stride = 2**l along the stack axis turns the restacked volume into the ensembler grid
        for i in range(3):
            assert entry["restacked_shape"][i] // entry["stride"][i] == entry["ensembler_shape"][i]
            assert entry["kernel_size"][i] == entry["stride"][i] == (2 ** level if i == axis else 1)
        assert entry["in_channels"] == experts[entry["expert"]]["network"]["channels"][level]
        assert entry["out_channels"] == ensembler["channels"][level]
    assert all(s == c // 8 for s, c in zip(entries[3]["ensembler_shape"], crop))


def test_expert_attention_only_on_small_maps():
    preset = get_preset("default")
    network = expert_network(preset, [184, 192], 4, 2)
    assert network["attention_levels"] == [3]      # 23 x 24 = 552 tokens <= 32 x 32
    assert network["mid_attention"] is True
    assert network["channels"] == [64, 128, 256, 512]
    assert network["time_embed_dim"] == 256
