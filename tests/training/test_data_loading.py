"""Expert and ensembler loaders: batch shapes and channels, 2.5D context and positions, seeding, validation, workers."""
import numpy as np
import pytest
import torch

from diffens_auto import paths
from diffens_auto.dataset.splits import split_case_ids
from diffens_auto.diffusion.slicing import position_channels
from diffens_auto.planning.planner import network_for_task
from diffens_auto.preprocessing.storage import load_case
from diffens_auto.tasks.conditioning import (condition_background, condition_mask, make_condition, task_background,
                                             task_volumes)
from diffens_auto.tasks.placement import draw_placement, place_in_crop
from diffens_auto.training.augmentation import AugmentationSettings
from diffens_auto.training.data_loading import EnsemblerDataLoader, ExpertDataLoader

EXPERTS = ["2d_axial", "2d_coronal", "2d_sagittal"]


def _expert(demo_data, plans, task="sr", configuration="2d_axial", **kwargs):
    kwargs.setdefault("num_workers", 0)
    return ExpertDataLoader(demo_data.data_folder, demo_data.train, plans, task, configuration, **kwargs)


def _ensembler(demo_data, plans, task="sr", configuration="3d_ensembler", **kwargs):
    kwargs.setdefault("num_workers", 0)
    return EnsemblerDataLoader(demo_data.data_folder, demo_data.train, plans, task, configuration, **kwargs)


@pytest.mark.parametrize("task", ["sr", "mt", "both"])
def test_expert_batches_fit_the_planned_network(demo_data, plans, task):
    for configuration in EXPERTS:
        config = plans["configurations"][configuration]
        batch = next(_expert(demo_data, plans, task, configuration, seed=1))
        in_channels = network_for_task(plans, configuration, task)["in_channels"]
        size = config["batch_size"]
        assert batch["y0"].shape == (size, 1, *config["patch_size"])
        assert batch["condition"].shape == (size, in_channels - 1, *config["patch_size"])
        assert all(v.dtype == torch.float32 for v in batch.values()) and set(batch) == {"y0", "condition"}


@pytest.mark.parametrize("task", ["sr", "mt", "both"])
def test_ensembler_batches_pretraining_and_fine_tuning(demo_data, plans, task):
    for configuration in ("3d_ensembler", "3d_ensembler_small"):
        config = plans["configurations"][configuration]
        n_cond = len(plans["tasks"][task]["condition_channels"])
        for patch in (None, config["fine_tune_shape"], [8, 12, 16]):
            batch = next(_ensembler(demo_data, plans, task, configuration, seed=0, patch_size=patch))
            shape = tuple(patch or config["patch_size"])
            assert batch["y0"].shape == (config["batch_size"], 1, *shape)
            assert batch["condition"].shape == (config["batch_size"], n_cond, *shape)
            # the experts' frame: coordinates, and the mask that the mt experts are planned with
            assert batch["positions"].shape == (config["batch_size"], 4, *shape)


def test_ensembler_patches_carry_their_cut_of_the_crop_wide_positions(demo_data, plans):
    batch = next(_ensembler(demo_data, plans, "sr", "3d_ensembler", seed=3, patch_size=[8, 12, 16]))
    crop = position_channels(tuple(plans["crop_size"]))[0]
    positions = batch["positions"][0, :3]
    # The patch's smallest coordinate on each axis locates it in the crop; then every voxel must match there.
    start = [int(torch.argmin((torch.linspace(-1, 1, n) - positions[a].min()).abs()))
             for a, n in enumerate(plans["crop_size"])]
    window = tuple(slice(s, s + n) for s, n in zip(start, (8, 12, 16)))
    assert torch.allclose(positions, crop[(slice(None),) + window])


def test_a_patch_larger_than_the_crop_pads_the_crop(demo_data, plans):
    crop = plans["crop_size"]
    batch = next(_ensembler(demo_data, plans, patch_size=[crop[0] + 4, crop[1], crop[2]]))
    assert batch["y0"].shape[2:] == (crop[0] + 4, crop[1], crop[2])


def test_context_slices_and_position_channels(demo_data, plans):
    config = plans["configurations"]["2d_axial"]
    config["network"].update(context_slices=1, position_channels=3)
    config["in_channels_per_task"]["both"] = 1 + 2 * 3 + 3
    loader = _expert(demo_data, plans, "both", seed=5, validation=True, batch_size=6, slices_per_case=3)
    batch = next(loader)
    assert batch["condition"].shape == (6, 9, 20, 24)

    # rebuild the (unaugmented, centred) condition volume of each slice's case and compare
    crop = plans["crop_size"]
    coords = position_channels(crop)[0]
    for b, case_id in enumerate(loader.last_case_ids):
        data, _, properties = load_case(demo_data.data_folder, case_id)
        target, inputs = task_volumes(data, properties, plans, "both")
        volume = np.concatenate([target, inputs])
        offset = draw_placement(volume.shape[1:], crop, (4, 4, 4), None, centred=True)
        volume = torch.from_numpy(place_in_crop(volume, crop, offset, task_background(properties, plans, "both")))
        condition, y0 = make_condition(volume[None, :1], volume[None, 1:], plans["tasks"]["both"])
        positions = batch["condition"][b, 6:]
        z = int(torch.argmin((coords[2, 0, 0] - positions[2, 0, 0]).abs()))
        torch.testing.assert_close(positions, coords[..., z])
        torch.testing.assert_close(batch["y0"][b, 0], y0[0, 0, ..., z])
        for c in range(2):
            for k, neighbour in enumerate((max(z - 1, 0), z, min(z + 1, crop[2] - 1))):
                torch.testing.assert_close(batch["condition"][b, 3 * c + k], condition[0, c, ..., neighbour])


def _with_mask(plans, configurations=EXPERTS):
    """The plans with a non-zero mask channel for the experts `configurations` in every task (mt has it planned)."""
    for name in configurations:
        config = plans["configurations"][name]
        config["network"]["mask_channels"] = 1
        for task, mask in config["mask_channels_per_task"].items():
            if not mask:
                config["mask_channels_per_task"][task] = 1
                config["in_channels_per_task"][task] += 1
    return plans


def _condition_backgrounds(demo_data, plans, case_ids, task):
    properties = [load_case(demo_data.data_folder, case_id)[2] for case_id in case_ids]
    return [condition_background(task_background(p, plans, task), plans["tasks"][task]) for p in properties]


def test_expert_batches_end_with_the_mask_of_the_unaugmented_condition(demo_data, plans):
    # SR's one condition channel (the degraded target) is never intensity-augmented, so even in augmented training
    # batches the mask must be exactly where it differs from the background.
    loader = _expert(demo_data, _with_mask(plans), "sr", seed=2, batch_size=4, slices_per_case=2)
    batch = next(loader)
    context = 2 * plans["configurations"]["2d_axial"]["network"]["context_slices"] + 1
    assert batch["condition"].shape[1] == context + 3 + 1
    mask, degraded = batch["condition"][:, -1:], batch["condition"][:, context // 2:context // 2 + 1]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for b, background in enumerate(_condition_backgrounds(demo_data, plans, loader.last_case_ids, "sr")):
        expected = condition_mask(degraded[b:b + 1, :, None], background)[:, :, 0]
        torch.testing.assert_close(mask[b:b + 1], expected, rtol=0, atol=0)


def test_an_mt_mask_is_taken_before_intensity_augmentation(demo_data, plans):
    # intensity augmentation only (always on), the case centred: the condition moves off its background value,
    # the mask must stay that of the unaugmented condition
    settings = AugmentationSettings(random_placement=False, mirror_axes=(), p_noise=1.0, p_brightness=1.0,
                                    brightness_range=(1.2, 1.25))
    loader = _expert(demo_data, _with_mask(plans), "mt", seed=3, batch_size=4, slices_per_case=2,
                     augmentation=settings)
    batch = next(loader)
    crop = plans["crop_size"]
    coords = position_channels(crop)[0]
    context = plans["configurations"]["2d_axial"]["network"]["context_slices"]
    for b, case_id in enumerate(loader.last_case_ids):
        data, _, properties = load_case(demo_data.data_folder, case_id)
        target, inputs = task_volumes(data, properties, plans, "mt")
        volume = np.concatenate([target, inputs])
        background = task_background(properties, plans, "mt")
        offset = draw_placement(volume.shape[1:], crop, (1, 1, 1), None, centred=True)
        volume = torch.from_numpy(place_in_crop(volume, crop, offset, background))
        condition, _ = make_condition(volume[None, :1], volume[None, 1:], plans["tasks"]["mt"])
        z = int(torch.argmin((coords[2, 0, 0] - batch["condition"][b, -2, 0, 0]).abs()))
        unaugmented = condition[..., z]
        expected = condition_mask(unaugmented[:, :, None], condition_background(background, plans["tasks"]["mt"]))
        torch.testing.assert_close(batch["condition"][b:b + 1, -1:], expected[:, :, 0], rtol=0, atol=0)
        assert not torch.allclose(batch["condition"][b, context], unaugmented[0, 0], atol=1e-3)


def test_ensembler_batches_carry_the_mask_in_the_experts_frame(demo_data, plans):
    plans = _with_mask(plans, plans["configurations"]["3d_ensembler"]["experts"])
    loader = _ensembler(demo_data, plans, "sr", "3d_ensembler", seed=4)
    batch = next(loader)
    assert batch["positions"].shape[1] == 4
    for b, background in enumerate(_condition_backgrounds(demo_data, plans, loader.last_case_ids, "sr")):
        expected = condition_mask(batch["condition"][b:b + 1], background)
        torch.testing.assert_close(batch["positions"][b:b + 1, 3:], expected, rtol=0, atol=0)


def test_slices_per_case(demo_data, plans):
    loader = _expert(demo_data, plans, seed=0, batch_size=4, slices_per_case=2)
    next(loader)
    ids = loader.last_case_ids
    assert ids[0] == ids[1] and ids[2] == ids[3]
    with pytest.raises(ValueError, match="slices_per_case"):
        _expert(demo_data, plans, batch_size=4, slices_per_case=3)


@pytest.mark.parametrize("make", [_expert, _ensembler])
def test_same_seed_and_epoch_give_the_same_batches(demo_data, plans, make):
    def batches(seed, epoch, n=3):
        loader = make(demo_data, plans, seed=seed, epoch=epoch)
        return [next(loader) for _ in range(n)]

    first, again, next_epoch = batches(7, 0), batches(7, 0), batches(7, 1)
    for a, b in zip(first, again):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not all(torch.equal(a["y0"], b["y0"]) for a, b in zip(first, next_epoch))

    loader = make(demo_data, plans, seed=7, epoch=0)
    next(loader)
    loader.set_epoch(1)
    torch.testing.assert_close(next(loader)["y0"], next_epoch[0]["y0"], rtol=0, atol=0)


def test_ranks_with_their_own_seed_draw_different_cases(demo_data, plans):
    def cases(seed):
        loader = _expert(demo_data, plans, seed=seed)
        drawn = []
        for _ in range(4):
            next(loader)
            drawn += loader.last_case_ids
        return drawn

    base_seed = 12
    assert cases(base_seed + 0) != cases(base_seed + 1)
    assert set(cases(base_seed)) == set(demo_data.train)


def test_validation_uses_the_val_cases_without_augmentation(demo_data, plans):
    loaders = [EnsemblerDataLoader.for_fold(demo_data.dataset_folder, plans, "sr", "3d_ensembler", 0,
                                            validation=True, seed=s, num_workers=0) for s in (0, 1)]
    batches = [next(loader) for loader in loaders]
    assert loaders[0].last_case_ids == demo_data.val
    for key in ("y0", "condition"):   # one val case, nothing random left
        torch.testing.assert_close(batches[0][key], batches[1][key], rtol=0, atol=0)
    train = ExpertDataLoader.for_fold(demo_data.dataset_folder, plans, "sr", "2d_axial", 0, num_workers=0)
    next(train)
    assert set(train.last_case_ids) <= set(demo_data.train)


def test_one_worker_yields_what_zero_workers_yield(demo_data, plans):
    reference = _expert(demo_data, plans, "both", seed=4)
    expected = [next(reference) for _ in range(3)]
    with _expert(demo_data, plans, "both", seed=4, num_workers=1) as loader:
        got = [next(loader) for _ in range(3)]
        assert loader.last_case_ids
    for a, b in zip(expected, got):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_num_workers_default_from_the_environment(demo_data, plans, monkeypatch):
    monkeypatch.delenv(paths.AUGMENTATION_WORKERS_VARIABLE, raising=False)
    assert _expert(demo_data, plans, num_workers=None).num_workers == paths.DEFAULT_AUGMENTATION_WORKERS
    monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
    assert _expert(demo_data, plans, num_workers=None).num_workers == 0
    monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "many")
    with pytest.raises(ValueError, match="diffens_n_proc_DA"):
        paths.augmentation_workers()


def test_wrong_configuration_kind_and_folds_are_explained(demo_data, plans):
    with pytest.raises(ValueError, match="EnsemblerDataLoader"):
        _expert(demo_data, plans, configuration="3d_ensembler")
    with pytest.raises(ValueError, match="ExpertDataLoader"):
        _ensembler(demo_data, plans, configuration="2d_axial")
    with pytest.raises(ValueError, match="folds 0..2"):
        split_case_ids(demo_data.dataset_folder, 7)
    train, val = split_case_ids(demo_data.dataset_folder, "all")
    assert train == val and len(train) == 3
