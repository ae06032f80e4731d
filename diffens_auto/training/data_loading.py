"""Training batches for the 2D experts and the 3D ensembler, from the preprocessed cases of one fold.

Each sample (see augmentation.py for the transforms):

    random case (uniform) -> load_case (memory-mapped; only the task's channels are read) -> task_volumes
    -> pad to plans["crop_size"] with each channel's background value, at a random block-aligned offset
       (training; the translation augmentation) or centred (validation)
    -> for experts planned with a mask channel: the non-zero mask of the condition made from the placed case
       (tasks.conditioning.condition_mask), stacked with the volume so that it moves with it
    -> spatial augmentation of the stacked [target, inputs] volume
    -> make_condition on the whole augmented volume (SR: degradation of the augmented target; cheap; a k-space
       task's prior: no condition channels at all)
    -> expert: `slices_per_case` random slices along the slice axis, with 2.5D context (slicing.context_stack)
       ensembler: a random patch (`patch_size`: the configuration's for pretraining, fine_tune_shape to
       fine-tune) at a block-aligned start, centred for validation
    -> intensity augmentation of the condition's input channels (never of the degraded one, see augmentation.py);
       then the expert's position channels (coordinates of the padded crop, slicing.position_channels) and its
       mask channel when its network plans them.

Batches: expert {"y0": (B, 1, a, b), "condition": (B, n_cond * (1 + 2 context) + positions + mask, a, b)};
ensembler {"y0": (B, 1, X, Y, Z), "condition": (B, n_cond, X, Y, Z), "positions": (B, 3 [+ 1], X, Y, Z) (the
experts' frame: the patch's cut of the crop-wide coordinates, for experts planned with position channels, and of
the mask when they take one), "target_params": (B, 2) (each case's
[center, half_range] of the target in the task's normalisation, for experts of another task's space)}; float32
torch tensors.

Determinism: every draw comes from np.random.default_rng([seed, epoch, worker]), so a loader built with the same
(seed, epoch) yields the same batches; with workers > 0, batchgenerators' MultiThreadedAugmenter collects them
round-robin (worker k makes batches k, k + n, ...), also reproducible, and worker 0 makes what zero workers make.
Give each DDP rank its own seed (base_seed + rank) so that the ranks draw different cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

from diffens_auto import paths
from diffens_auto.dataset.splits import split_case_ids
from diffens_auto.diffusion.slicing import context_stack, position_channels, slices_of
from diffens_auto.planning.planner import network_for_task
from diffens_auto.preprocessing.storage import load_case
from diffens_auto.tasks.conditioning import (condition_background, condition_mask, make_condition, task_background,
                                             task_normalization, task_volumes)
from diffens_auto.tasks.placement import block_step, draw_block_offset, draw_placement, place_in_crop
from diffens_auto.training.augmentation import (AugmentationSettings, augment_intensity, augment_spatial,
                                                intensity_transforms)


@dataclass
class CaseSample:
    """One augmented case in the loader's volume: what the batch samplers cut slices or patches from."""

    case_id: str
    y0: torch.Tensor                 # (1, *volume_shape)
    condition: torch.Tensor          # (n_cond, *volume_shape)
    target_params: np.ndarray        # [center, half_range] of the target in the task's normalisation
    mask: torch.Tensor | None        # (1, *volume_shape) the condition's non-zero mask, when the experts take it


class _VolumeSampler(SlimDataLoaderBase):
    """Draws cases and makes (y0, condition) volumes; subclasses cut them into batches (numpy, for the workers)."""

    kind = ""

    def __init__(self, data_folder, case_ids: Sequence[str], plans: Mapping, task: str, configuration: str, *,
                 seed: int, epoch: int, batch_size: int | None, validation: bool,
                 augmentation: AugmentationSettings | None, volume_shape: Sequence[int] | None = None):
        config = plans["configurations"][configuration]
        if config["kind"] != self.kind:
            raise ValueError(f"Configuration '{configuration}' is an {config['kind']}, not an {self.kind}: use the "
                             f"{'Expert' if config['kind'] == 'expert' else 'Ensembler'}DataLoader.")
        if not case_ids:
            raise ValueError(f"No cases to draw from for '{configuration}' (an empty fold?).")
        super().__init__(None, int(batch_size or config["batch_size"]))
        self.data_folder = str(data_folder)
        self.case_ids = list(case_ids)
        self.plans, self.task, self.configuration, self.config = plans, task, configuration, config
        self.task_plans = plans["tasks"][task]
        self.seed, self.epoch, self.validation = int(seed), int(epoch), bool(validation)
        self.step = block_step(self.task_plans)
        self.volume_shape = tuple(int(n) for n in (volume_shape or plans["crop_size"]))
        if validation:
            self.settings = AugmentationSettings.disabled()
        else:
            self.settings = augmentation or AugmentationSettings.for_configuration(plans, configuration)
        self._transforms = intensity_transforms(self.settings)
        # the condition is [inputs..., up(A target)]: only the inputs are intensity-augmented
        self.num_augmented = len(self.task_plans["inputs"])
        # any expert planned with a mask for any task (a fusion ensembler's experts are of other tasks): the frame's
        # mask channel is ignored by the experts that do not take it
        self.uses_mask = bool(self.task_plans["condition_channels"]) and any(
            plans["configurations"][name]["network"].get("mask_channels", 0)
            or any(plans["configurations"][name].get("mask_channels_per_task", {}).values())
            for name in self.expert_names())
        self._rng = None

    def expert_names(self) -> list[str]:
        """The expert configurations whose inputs this loader's batches feed."""
        return [self.configuration]

    def set_thread_id(self, thread_id: int) -> None:
        """Called in each batchgenerators worker process: its own random stream, one torch thread."""
        super().set_thread_id(thread_id)
        self._rng = None
        torch.set_num_threads(1)

    @property
    def rng(self) -> np.random.Generator:
        """The stream of this (seed, epoch, worker); made on first use, so a worker makes its own."""
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, self.epoch, self.thread_id])
        return self._rng

    def set_epoch(self, epoch: int) -> None:
        """Start the stream of another epoch."""
        self.epoch, self._rng = int(epoch), None

    def case_sample(self, rng: np.random.Generator) -> "CaseSample":
        """A random, augmented case (CaseSample)."""
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        data, _, properties = load_case(self.data_folder, case_id, mmap=True)
        params = task_normalization(properties, self.plans, self.task)[0][1]
        target_params = np.array([params["center"], params["half_range"]], dtype=np.float32)
        target, inputs = task_volumes(data, properties, self.plans, self.task)
        background = task_background(properties, self.plans, self.task)
        volume = np.concatenate([target, inputs])
        offset = draw_placement(volume.shape[1:], self.volume_shape, self.step, rng,
                                centred=not self.settings.random_placement)
        volume = place_in_crop(volume, self.volume_shape, offset, background)
        if self.uses_mask:
            # the mask of the placed case, moved with it: a rotation's interpolation blurs the background value
            volume = np.concatenate([volume, self._condition_mask(volume, background)])
            background = np.append(background, 0.0)
        volume = augment_spatial(volume, background, self.step, self.settings, rng)
        mask = None
        if self.uses_mask:
            volume, mask = volume[:-1], torch.from_numpy((volume[-1:] > 0.5).astype(np.float32))
        stacked = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
        condition, y0 = make_condition(stacked[:, :1], stacked[:, 1:], self.task_plans)
        return CaseSample(case_id, y0[0], condition[0], target_params, mask)

    def _condition_mask(self, volume: np.ndarray, background: np.ndarray) -> np.ndarray:
        """(1, X, Y, Z) non-zero mask of the condition made from a placed [target, inputs] volume."""
        stacked = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
        condition, _ = make_condition(stacked[:, :1], stacked[:, 1:], self.task_plans)
        return condition_mask(condition, condition_background(background, self.task_plans))[0].numpy()

    def generate_train_batch(self) -> dict:
        """{"y0", "condition"} as float32 numpy arrays, plus "case_ids" (the loader takes it off)."""
        raise NotImplementedError


class ExpertBatchSampler(_VolumeSampler):
    """Random slices along the expert's slice axis, with their 2.5D context and position channels."""

    kind = "expert"

    def __init__(self, *args, slices_per_case: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if slices_per_case < 1 or self.batch_size % slices_per_case:
            raise ValueError(f"slices_per_case must divide the batch size {self.batch_size}, got {slices_per_case}.")
        network = network_for_task(self.plans, self.configuration, self.task)
        self.slices_per_case = int(slices_per_case)
        self.slice_axis = int(self.config["slice_axis"])
        self.context_slices = int(network.get("context_slices", 0))
        self.position_channels = int(network.get("position_channels", 0))
        self.mask_channels = int(network.get("mask_channels", 0))
        self.in_channels = int(network["in_channels"])

    def generate_train_batch(self) -> dict:
        rng, dim = self.rng, 2 + self.slice_axis
        y0s, conditions, case_ids = [], [], []
        for _ in range(self.batch_size // self.slices_per_case):
            case = self.case_sample(rng)
            picked = rng.choice(self.volume_shape[self.slice_axis], self.slices_per_case, replace=False)
            idx = torch.from_numpy(np.sort(picked).astype(np.int64))
            y0s.append(slices_of(case.y0[None].index_select(dim, idx), self.slice_axis).numpy())
            stacked = slices_of(context_stack(case.condition[None], self.slice_axis, self.context_slices, idx),
                                self.slice_axis).numpy()    # (n, C * (2s + 1), a, b)
            conditions.append(self._slice_conditions(stacked, case, idx, rng))
            case_ids += [case.case_id] * self.slices_per_case
        return {"y0": np.concatenate(y0s), "condition": np.concatenate(conditions), "case_ids": np.array(case_ids)}

    def _slice_conditions(self, stacked: np.ndarray, case: CaseSample, idx: torch.Tensor, rng) -> np.ndarray:
        """Intensity augmentation (a channel and its context slices share one draw), then the position and mask
        channels."""
        out, n_cond = stacked, case.condition.shape[0]
        if n_cond:    # an unconditional prior (a k-space task) has no condition channel to augment
            grouped = stacked.reshape(stacked.shape[0], n_cond, -1, *stacked.shape[2:])
            out = np.stack([augment_intensity(g, self.settings, rng, self._transforms, self.num_augmented)
                            for g in grouped])
            out = out.reshape(stacked.shape)
        if self.position_channels:
            coords = position_channels(self.volume_shape, channels=self.position_channels)
            positions = slices_of(coords.index_select(2 + self.slice_axis, idx), self.slice_axis).numpy()
            out = np.concatenate([out, positions], axis=1)
        if self.mask_channels:
            mask = slices_of(case.mask[None].index_select(2 + self.slice_axis, idx), self.slice_axis).numpy()
            out = np.concatenate([out, mask], axis=1)
        return out


class EnsemblerBatchSampler(_VolumeSampler):
    """Random 3D patches (block-aligned starts) of the condition and y0 volumes."""

    kind = "ensembler"

    def __init__(self, data_folder, case_ids, plans, task, configuration, *,
                 patch_size: Sequence[int] | None = None, **kwargs):
        config = plans["configurations"][configuration]
        self.patch_size = tuple(int(n) for n in (patch_size or config["patch_size"]))
        volume_shape = tuple(max(int(c), p) for c, p in zip(plans["crop_size"], self.patch_size))
        super().__init__(data_folder, case_ids, plans, task, configuration, volume_shape=volume_shape, **kwargs)

    def expert_names(self) -> list[str]:
        """The ensembler's experts, whose inputs the batches' frame feeds."""
        return list(self.config["experts"])

    def generate_train_batch(self) -> dict:
        rng = self.rng
        y0s, conditions, positions, case_ids, target_params = [], [], [], [], []
        # Experts planned with position channels saw crop-wide coordinates: a patch gets its cut of them.
        coords = position_channels(self.volume_shape)[0]
        for _ in range(self.batch_size):
            case = self.case_sample(rng)
            target_params.append(case.target_params)
            start = [draw_block_offset(v - p, s, rng, centred=not self.settings.random_placement)
                     for v, p, s in zip(self.volume_shape, self.patch_size, self.step)]
            window = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, self.patch_size))
            y0s.append(case.y0[window].numpy())
            conditions.append(augment_intensity(case.condition[window].numpy(), self.settings, rng,
                                                self._transforms, self.num_augmented))
            frame = coords if case.mask is None else torch.cat([coords, case.mask])
            positions.append(frame[window].numpy())
            case_ids.append(case.case_id)
        return {"y0": np.stack(y0s), "condition": np.stack(conditions), "positions": np.stack(positions),
                "target_params": np.stack(target_params), "case_ids": np.array(case_ids)}


class _BatchLoader:
    """An endless iterator of torch batches: in-process (0 workers) or batchgenerators' MultiThreadedAugmenter."""

    def __init__(self, sampler: _VolumeSampler, num_workers: int | None):
        self.sampler = sampler
        self.num_workers = paths.augmentation_workers() if num_workers is None else int(num_workers)
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}.")
        self.last_case_ids: list[str] = []
        self._augmenter = None

    @classmethod
    def for_fold(cls, preprocessed_dataset_folder: str | Path, plans: Mapping, task: str, configuration: str,
                 fold: int | str = 0, *, validation: bool = False, **kwargs):
        """A loader over a fold's training (or, with validation=True, validation) cases of the plans' data."""
        train, val = split_case_ids(preprocessed_dataset_folder, fold)
        data_folder = Path(preprocessed_dataset_folder) / plans["data_identifier"]
        return cls(data_folder, val if validation else train, plans, task, configuration, validation=validation,
                   **kwargs)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.num_workers == 0:
            batch = self.sampler.generate_train_batch()
        else:
            if self._augmenter is None:
                self._augmenter = MultiThreadedAugmenter(self.sampler, None, self.num_workers,
                                                         num_cached_per_queue=2)
            batch = next(self._augmenter)
        self.last_case_ids = [str(c) for c in batch.pop("case_ids")]
        return {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in batch.items()}

    def set_epoch(self, epoch: int) -> None:
        """Continue with the batches of `epoch` (as a new loader with that epoch would yield); restarts workers."""
        self.close()
        self.sampler.set_epoch(epoch)

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._augmenter is not None:
            self._augmenter._finish()
            self._augmenter = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class ExpertDataLoader(_BatchLoader):
    """Expert batches {"y0": (B, 1, a, b), "condition": (B, in_channels - 1, a, b)} of one configuration and task."""

    def __init__(self, data_folder: str | Path, case_ids: Sequence[str], plans: Mapping, task: str,
                 configuration: str, *, seed: int = 0, epoch: int = 0, validation: bool = False,
                 batch_size: int | None = None, num_workers: int | None = None,
                 augmentation: AugmentationSettings | None = None, slices_per_case: int = 1):
        """`data_folder`: preprocessed/DatasetXXX/<data_identifier>; `case_ids`: the fold's training (or val) cases.

        batch_size defaults to the configuration's; `slices_per_case` slices come from each drawn case (1: every
        slice of a batch from its own random case); num_workers defaults to `diffens_n_proc_DA`.
        """
        sampler = ExpertBatchSampler(data_folder, case_ids, plans, task, configuration, seed=seed, epoch=epoch,
                                     batch_size=batch_size, validation=validation, augmentation=augmentation,
                                     slices_per_case=slices_per_case)
        super().__init__(sampler, num_workers)


class EnsemblerDataLoader(_BatchLoader):
    """Ensembler batches {"y0": (B, 1, *patch), "condition": (B, n_cond, *patch)} of one configuration and task."""

    def __init__(self, data_folder: str | Path, case_ids: Sequence[str], plans: Mapping, task: str,
                 configuration: str, *, seed: int = 0, epoch: int = 0, validation: bool = False,
                 batch_size: int | None = None, num_workers: int | None = None,
                 augmentation: AugmentationSettings | None = None, patch_size: Sequence[int] | None = None):
        """As ExpertDataLoader; `patch_size` defaults to the configuration's (pretraining): pass its
        fine_tune_shape to fine-tune. A patch larger than the crop pads the crop to it."""
        sampler = EnsemblerBatchSampler(data_folder, case_ids, plans, task, configuration, seed=seed, epoch=epoch,
                                        batch_size=batch_size, validation=validation, augmentation=augmentation,
                                        patch_size=patch_size)
        super().__init__(sampler, num_workers)
