"""Data augmentation for diffusion training, in the order the loader calls the steps.

1. **Placement** (`tasks/placement.py`: `draw_block_offset`, `place_in_crop`): the case is padded to the plans' crop with each channel's
   background value, at an offset that is a multiple of the degradation factor: random when training (this is
   the translation augmentation), nearest the centre for validation.
2. **Spatial** (`augment_spatial`), on the stacked [target, inputs] volume, so target and inputs get the
   identical transform (what batchgeneratorsv2 calls a `regression_target`):
   - block-aligned transforms, for every task: mirroring along each axis and 90° rotations in the planes
     listed in the settings whose two axes have equal sizes and equal factors. On a volume whose sizes are
     multiples of the factor (the crop is: plans `crop_multiples`) these map whole degradation blocks onto whole
     blocks, so A(aug(target)) = aug(A(target)) and the condition made afterwards is exactly the degraded
     augmented target.
   - continuous rotation (about the listed axes) and scaling, only for tasks WITHOUT a block grid (they would
     mix blocks): no degradation, or a k-space one, whose prior sees the clean target alone (its mask, even one
     per slice, constrains nothing in training); batchgenerators' coordinate-grid helpers, order-3
     interpolation, background fill.
3. The loader then makes the condition from the augmented volume (SR: the degradation of the augmented
   target) and slices or crops it.
4. **Intensity** (`augment_intensity`), last and on the input channels of the condition only (never on y0, never
   on the position channels, never on the degraded channel up(A target)): batchgenerators' Gaussian noise,
   multiplicative brightness, contrast and gamma, each input channel on its own (a channel and its 2.5D context
   slices share one draw). The degraded channel stays as made because prediction relies on
   target = y0 / s + up(A target) with the measured up(A target), and y0 was made from the clean one; an
   augmented copy would teach the expert a residual that no longer adds up to the target.

Choices (`AugmentationSettings.for_configuration`): an expert rotates only within its own slice plane (a
quarter turn or a small angle about its slice axis keeps its slices in plane), so a plane-specific expert stays
plane-specific; an ensembler gets no rotations, because it fuses frozen plane-specific experts that must see
their planes as at inference. Mirroring is on every axis; translations are the block-aligned placement.
Everything is drawn from one `np.random.Generator`: batchgenerators' intensity transforms draw from the global
`np.random` / `random` states, which are seeded from that generator for the call and restored afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from batchgenerators.augmentations.utils import (create_zero_centered_coordinate_mesh, interpolate_img,
                                                 rotate_coords_3d, scale_coords)
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform


@dataclass(frozen=True)
class AugmentationSettings:
    """What the loader augments, with probabilities per sample (nnU-Net's defaults for the intensity part)."""

    enabled: bool = True
    random_placement: bool = True                     # translation: random block-aligned offset in the crop
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_mirror: float = 0.5                             # per axis
    rot90_planes: tuple[tuple[int, int], ...] = ()    # candidate planes; kept only where sizes and factors match
    p_rot90: float = 0.5
    rotation_axes: tuple[int, ...] = ()               # continuous rotation, tasks without degradation only
    max_rotation_degrees: float = 15.0
    p_rotation: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.15)   # continuous scaling, tasks without degradation only
    p_scale: float = 0.2
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_noise: float = 0.1
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_brightness: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3

    @classmethod
    def disabled(cls) -> "AugmentationSettings":
        """No augmentation at all, and the case centred in the crop (validation)."""
        return cls(enabled=False, random_placement=False)

    @classmethod
    def for_configuration(cls, plans: Mapping, configuration: str, **overrides) -> "AugmentationSettings":
        """The defaults for a configuration: an expert rotates in its slice plane, an ensembler not at all."""
        config = plans["configurations"][configuration]
        if config["kind"] == "expert":
            axis = int(config["slice_axis"])
            plane = tuple(a for a in range(3) if a != axis)
            return cls(rot90_planes=(plane,), rotation_axes=(axis,), **overrides)
        return cls(**overrides)

    def replace(self, **changes) -> "AugmentationSettings":
        """A copy with some fields changed (e.g. p_noise=0)."""
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- placement (translation) and patches
# block_step, draw_block_offset, draw_placement and place_in_crop live in tasks/placement.py: prediction places a
# case in the crop's coordinate frame the way validation does.


# ---------------------------------------------------------------- spatial


def allowed_rot90_planes(shape: Sequence[int], step: Sequence[int],
                         planes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """The candidate planes in which a quarter turn keeps the shape and the block grid (equal sizes and factors)."""
    return [(a, b) for a, b in planes if shape[a] == shape[b] and step[a] == step[b]]


@dataclass(frozen=True)
class BlockAlignedTransform:
    """Mirror `flips` (spatial axes), then `quarter_turns` x 90° in `plane`, on the trailing three dims."""

    flips: tuple[int, ...] = ()
    quarter_turns: int = 0
    plane: tuple[int, int] = (0, 1)

    def __call__(self, volume):
        """Apply to a numpy array or torch tensor (..., X, Y, Z); a low-resolution volume works the same way."""
        lead = volume.ndim - 3
        flips = [lead + a for a in self.flips]
        dims = [lead + a for a in self.plane]
        if isinstance(volume, torch.Tensor):
            out = torch.flip(volume, flips) if flips else volume
            return torch.rot90(out, self.quarter_turns, dims) if self.quarter_turns else out
        out = np.flip(volume, flips) if flips else volume
        out = np.rot90(out, self.quarter_turns, dims) if self.quarter_turns else out
        return np.ascontiguousarray(out)


def draw_block_aligned(shape: Sequence[int], step: Sequence[int], settings: AugmentationSettings,
                       rng: np.random.Generator) -> BlockAlignedTransform:
    """Random mirroring and quarter turn allowed for a volume of spatial `shape` and factor `step`."""
    flips = tuple(a for a in settings.mirror_axes if rng.random() < settings.p_mirror)
    planes = allowed_rot90_planes(shape, step, settings.rot90_planes)
    if planes and rng.random() < settings.p_rot90:
        return BlockAlignedTransform(flips, int(rng.integers(1, 4)), planes[int(rng.integers(len(planes)))])
    return BlockAlignedTransform(flips)


def rotate_and_scale(volume: np.ndarray, background: Sequence[float], angles: Sequence[float],
                     scale: float) -> np.ndarray:
    """(C, X, Y, Z) rotated by `angles` (radians, about axes 0, 1, 2) and scaled about the centre, order 3.

    batchgenerators' coordinate-grid helpers; voxels from outside the volume get the channel's background.
    """
    shape = volume.shape[1:]
    coords = scale_coords(rotate_coords_3d(create_zero_centered_coordinate_mesh(shape), *angles), scale)
    coords += (np.asarray(shape, dtype=float) - 1).reshape(3, 1, 1, 1) / 2
    out = np.empty_like(volume)
    for c, bg in enumerate(background):
        # batchgenerators' constant border is one value; shifting the background to 0 gives each channel its own
        out[c] = interpolate_img(volume[c] - bg, coords, order=3, mode="constant", cval=0.0) + bg
    return out


def augment_spatial(volume: np.ndarray, background: Sequence[float], step: Sequence[int],
                    settings: AugmentationSettings, rng: np.random.Generator) -> np.ndarray:
    """Identical spatial augmentation of every channel of a (C, X, Y, Z) [target, inputs] volume.

    Block-aligned moves always; continuous rotation and scaling only when `step` is all ones (no block grid: no
    degradation, or a k-space one).
    """
    if not settings.enabled:
        return volume
    volume = draw_block_aligned(volume.shape[1:], step, settings, rng)(volume)
    if any(int(s) != 1 for s in step):
        return volume
    angles = [0.0, 0.0, 0.0]
    rotate = bool(settings.rotation_axes) and rng.random() < settings.p_rotation
    if rotate:
        for axis in settings.rotation_axes:
            angles[axis] = float(np.deg2rad(rng.uniform(-1, 1) * settings.max_rotation_degrees))
    scale = float(rng.uniform(*settings.scale_range)) if rng.random() < settings.p_scale else 1.0
    if not rotate and scale == 1.0:
        return volume
    return rotate_and_scale(volume, background, angles, scale)


# ---------------------------------------------------------------- intensity


@contextlib.contextmanager
def global_random_from(rng: np.random.Generator):
    """Seed np.random and random (which batchgenerators' transforms draw from) from `rng`; restore them after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    seed = int(rng.integers(2 ** 32))
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def intensity_transforms(settings: AugmentationSettings) -> Compose:
    """batchgenerators' intensity transforms of the settings, each condition channel drawn on its own."""
    return Compose([
        GaussianNoiseTransform(noise_variance=settings.noise_std, p_per_sample=settings.p_noise, per_channel=True),
        BrightnessMultiplicativeTransform(settings.brightness_range, per_channel=True,
                                          p_per_sample=settings.p_brightness),
        ContrastAugmentationTransform(settings.contrast_range, preserve_range=True, per_channel=True,
                                      p_per_sample=settings.p_contrast),
        GammaTransform(settings.gamma_range, invert_image=False, per_channel=True, retain_stats=True,
                       p_per_sample=settings.p_gamma),
    ])


def augment_intensity(condition: np.ndarray, settings: AugmentationSettings, rng: np.random.Generator,
                      transforms: Compose | None = None, num_channels: int | None = None) -> np.ndarray:
    """Intensity augmentation of the first `num_channels` (default all) of (C, ...) condition channels, one draw
    per channel; the others are copied unchanged. Returns a new float32 array."""
    condition = np.array(condition, dtype=np.float32, copy=True)
    count = condition.shape[0] if num_channels is None else int(num_channels)
    if not settings.enabled or count == 0:
        return condition
    transforms = transforms or intensity_transforms(settings)
    with global_random_from(rng):
        condition[:count] = transforms(data=condition[None, :count])["data"][0]
    return condition
