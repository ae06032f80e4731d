"""Augmentation: block-aligned moves commute with the degradation, identical transforms for target and inputs,
the SR condition made after the spatial augmentation, intensity augmentation on the condition only."""
import random

import numpy as np
import pytest
import torch

from diffens_auto.operators import AvgPoolSR, upsample_to_grid
from diffens_auto.planning import network_for_task
from diffens_auto.preprocessing.normalization import renormalize
from diffens_auto.preprocessing.storage import load_properties
from diffens_auto.tasks.placement import draw_block_offset, draw_placement, place_in_crop
from diffens_auto.training.augmentation import (AugmentationSettings, BlockAlignedTransform, allowed_rot90_planes,
                                                augment_intensity, augment_spatial, draw_block_aligned)
from diffens_auto.training.data_loading import EnsemblerDataLoader, ExpertDataLoader

EVERY_MOVE = AugmentationSettings(p_mirror=0.5, rot90_planes=((0, 1), (0, 2), (1, 2)), p_rot90=0.9,
                                  rotation_axes=(0, 1, 2), p_rotation=1.0, p_scale=1.0)
NO_INTENSITY = dict(p_noise=0.0, p_brightness=0.0, p_contrast=0.0, p_gamma=0.0)


def test_rot90_only_where_sizes_and_factors_match():
    assert allowed_rot90_planes((8, 8, 12), (4, 4, 2), [(0, 1), (0, 2), (1, 2)]) == [(0, 1)]
    assert allowed_rot90_planes((8, 8, 8), (4, 4, 2), [(0, 2), (1, 2)]) == []


@pytest.mark.parametrize("seed", range(8))
def test_block_aligned_moves_commute_with_the_degradation(seed):
    rng = np.random.default_rng(seed)
    factor, shape = (4, 4, 2), (8, 8, 12)
    target = torch.from_numpy(rng.normal(size=(1, 1) + shape))
    transform = draw_block_aligned(shape, factor, EVERY_MOVE, rng)
    operator = AvgPoolSR(factor)
    torch.testing.assert_close(operator.A(transform(target)), transform(operator.A(target)))
    # numpy and torch give the same result
    np.testing.assert_array_equal(transform(target.numpy()), transform(target).numpy())


def test_every_block_aligned_move_is_drawn():
    rng = np.random.default_rng(0)
    drawn = [draw_block_aligned((8, 8, 12), (4, 4, 2), EVERY_MOVE, rng) for _ in range(200)]
    assert {a for t in drawn for a in t.flips} == {0, 1, 2}
    assert {t.quarter_turns for t in drawn} == {0, 1, 2, 3} and {t.plane for t in drawn if t.quarter_turns} == {(0, 1)}


def test_block_aligned_translation_commutes_with_the_degradation():
    rng = np.random.default_rng(1)
    factor = (4, 4, 2)
    case = rng.normal(size=(1, 8, 4, 6))
    offset = draw_placement(case.shape[1:], (16, 12, 10), factor, rng)
    assert all(o % f == 0 for o, f in zip(offset, factor))
    placed = place_in_crop(case, (16, 12, 10), offset, [-1.0])
    lowres_placed = place_in_crop(AvgPoolSR(factor).A(torch.from_numpy(case)).numpy(), (4, 3, 5),
                                  [o // f for o, f in zip(offset, factor)], [-1.0])
    np.testing.assert_allclose(AvgPoolSR(factor).A(torch.from_numpy(placed)).numpy(), lowres_placed, rtol=1e-6)


def test_placement_offsets():
    rng = np.random.default_rng(0)
    offsets = {draw_block_offset(9, 4, rng) for _ in range(100)}
    assert offsets == {0, 4, 8}
    assert {draw_block_offset(-9, 4, rng) for _ in range(100)} == {0, -4, -8}   # a larger case is cut
    assert draw_block_offset(9, 4, rng, centred=True) == 4 and draw_block_offset(3, 1, rng, centred=True) == 2
    placed = place_in_crop(np.ones((2, 3, 3, 3)), (5, 5, 5), (-1, 1, 2), [7.0, 9.0])
    assert placed.shape == (2, 5, 5, 5) and placed[0].sum() == 2 * 3 * 3 + 7 * (125 - 18)
    assert (placed[1, 2:] == 9).all()


def test_degraded_tasks_get_only_block_aligned_moves():
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(2, 8, 8, 8)).astype(np.float32)
    for _ in range(10):
        out = augment_spatial(volume, [0.0, 0.0], (4, 4, 4), EVERY_MOVE, rng)
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(volume, axis=None))   # a permutation


def test_target_and_inputs_get_the_identical_transform():
    rng = np.random.default_rng(4)
    target = rng.normal(size=(1, 10, 12, 10)).astype(np.float32)
    inputs = np.concatenate([2 * target + 1, -target]).astype(np.float32)   # known functions of the target
    volume = np.concatenate([target, inputs])
    background = np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    changed = 0
    for _ in range(6):
        out = augment_spatial(volume, background, (1, 1, 1), EVERY_MOVE, rng)   # continuous moves too
        np.testing.assert_allclose(out[1], 2 * out[0] + 1, atol=1e-4)
        np.testing.assert_allclose(out[2], -out[0], atol=1e-4)
        changed += not np.allclose(out, volume)
    assert changed == 6


def test_spatial_augmentation_is_seeded():
    volume = np.random.default_rng(0).normal(size=(2, 8, 8, 8)).astype(np.float32)
    runs = [augment_spatial(volume, [0.0, 0.0], (1, 1, 1), EVERY_MOVE, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(*runs)


def test_intensity_augmentation_is_seeded_copies_and_restores_global_random():
    settings = AugmentationSettings(p_noise=1.0, p_brightness=1.0, p_contrast=1.0, p_gamma=1.0)
    condition = np.random.default_rng(0).normal(size=(2, 6, 6, 6)).astype(np.float32)
    before = condition.copy()
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    first = augment_intensity(condition, settings, np.random.default_rng(5))
    assert np.random.random() == expected_np and random.random() == expected_py
    second = augment_intensity(condition, settings, np.random.default_rng(5))
    np.testing.assert_array_equal(condition, before)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and not np.allclose(first, before)
    np.testing.assert_array_equal(augment_intensity(condition, AugmentationSettings.disabled(), None), before)


def _with_task(plans, name, **changes):
    plans["tasks"][name] = dict(plans["tasks"][changes.pop("base")], **changes)
    for config in plans["configurations"].values():
        config["in_channels_per_task"][name] = config["in_channels_per_task"]["mt"]
    return plans


def test_loader_sr_condition_is_made_from_the_augmented_target(demo_data, plans):
    # epsilon_target makes y0 the augmented target itself, so the condition can be checked against it
    plans = _with_task(plans, "sr_plain", base="sr", parametrization="epsilon_target")
    settings = AugmentationSettings(p_mirror=1.0, **NO_INTENSITY)
    loader = EnsemblerDataLoader(demo_data.data_folder, demo_data.train, plans, "sr_plain", "3d_ensembler", seed=2,
                                 num_workers=0, augmentation=settings, patch_size=plans["crop_size"])
    unaugmented = EnsemblerDataLoader(demo_data.data_folder, demo_data.train, plans, "sr_plain", "3d_ensembler",
                                      seed=2, num_workers=0, validation=True, patch_size=plans["crop_size"])
    operator = AvgPoolSR(plans["tasks"]["sr"]["degradation"]["factor"])
    batch, reference = next(loader), next(unaugmented)
    y0 = batch["y0"]
    assert not torch.allclose(y0, reference["y0"])
    torch.testing.assert_close(batch["condition"], upsample_to_grid(operator.A(y0), operator.factor, y0.shape[2:]))


def test_loader_mt_target_and_inputs_move_together(demo_data, plans):
    # a task whose input is its own target channel: y0 (dataset scale) = condition (case scale) renormalised
    target = plans["tasks"]["mt"]["target"]
    plans = _with_task(plans, "mt_self", base="mt", inputs=[target], condition_channels=[target])
    settings = EVERY_MOVE.replace(rot90_planes=((0, 1),), **NO_INTENSITY)
    loader = ExpertDataLoader(demo_data.data_folder, demo_data.train, plans, "mt_self", "2d_sagittal", seed=0,
                              num_workers=0, augmentation=settings)
    centre = plans["configurations"]["2d_sagittal"]["network"]["context_slices"]   # the slice itself, not a neighbour
    for _ in range(3):
        batch = next(loader)
        for b, case_id in enumerate(loader.last_case_ids):
            normalization = load_properties(demo_data.data_folder, case_id)["normalization"][str(target)]
            expected = renormalize(batch["condition"][b, centre:centre + 1], normalization["case"],
                                   plans["normalization"]["dataset"][str(target)])
            torch.testing.assert_close(batch["y0"][b], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("configuration", ["2d_axial", "3d_ensembler"])
def test_loader_intensity_augmentation_leaves_y0_untouched(demo_data, plans, configuration):
    loader_class = ExpertDataLoader if configuration.startswith("2d") else EnsemblerDataLoader
    strong = AugmentationSettings(p_noise=1.0, p_brightness=1.0, p_contrast=1.0, p_gamma=1.0)
    none = strong.replace(**NO_INTENSITY)
    batches = [next(loader_class(demo_data.data_folder, demo_data.train, plans, "both", configuration, seed=3,
                                 num_workers=0, augmentation=s)) for s in (strong, none)]
    torch.testing.assert_close(batches[0]["y0"], batches[1]["y0"], rtol=0, atol=0)
    # the condition is [T1ce (input), up(A FLAIR) (degraded)] (x 2.5D context slices): the input is augmented,
    # the degraded channel is not, so target = y0 / s + up(A target) still holds for every sample
    context = 2 * network_for_task(plans, configuration, "both").get("context_slices", 0) + 1
    if configuration == "3d_ensembler":
        context = 1
    inputs = slice(0, context)
    degraded = slice(context, 2 * context)
    assert not torch.allclose(batches[0]["condition"][:, inputs], batches[1]["condition"][:, inputs])
    torch.testing.assert_close(batches[0]["condition"][:, degraded], batches[1]["condition"][:, degraded],
                               rtol=0, atol=0)
