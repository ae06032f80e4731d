"""The geometry of a plan: target spacing, crop size, resolution levels and the U-Net dicts built on them.

Axes are (X, Y, Z); the expert of a plane sees slices perpendicular to its slice axis
(axial: Z, coronal: Y, sagittal: X), so its 2D patch is the crop without that axis.
"""
import math

import numpy as np

# the input-channel rule of an expert lives with the networks; planning re-exports it under its own name
from diffens_auto.networks.expert import expert_input_channels as expert_in_channels  # noqa: F401

from .presets import Preset

EXPERT_PLANES = {"2d_axial": 2, "2d_coronal": 1, "2d_sagittal": 0}   # configuration -> slice axis
PLANE_NAMES = {2: "axial", 1: "coronal", 0: "sagittal"}


def target_spacing_for(spacings, shapes, anisotropy_threshold: float) -> list[float]:
    """Median spacing per axis, except that a clearly low-resolution axis with few voxels gets a finer one."""
    spacings = np.asarray(spacings, dtype=float)
    shapes = np.asarray(shapes, dtype=float)
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = [axis for axis in range(3) if axis != coarse]
    # sizes the median case would have at the median spacing
    sizes = np.median(shapes * spacings / target, axis=0)
    coarse_spacing_is_outlier = target[coarse] > anisotropy_threshold * max(target[others])
    coarse_axis_is_short = sizes[coarse] * anisotropy_threshold < min(sizes[others])
    if coarse_spacing_is_outlier and coarse_axis_is_short:
        # Resampling every case to the median thick-slice spacing would throw away the finer scans'
        # detail; the 10th percentile keeps it, but never finer than the in-plane spacing.
        finer = float(np.percentile(spacings[:, coarse], 10))
        target[coarse] = max(finer, max(target[others]))
    return [float(s) for s in target]


def extent_at_spacing(shapes, spacings, target_spacing) -> list[float]:
    """Largest foreground extent per axis, in voxels of the target spacing, over all cases."""
    shapes = np.asarray(shapes, dtype=float)
    spacings = np.asarray(spacings, dtype=float)
    return [float(v) for v in np.max(shapes * spacings / np.asarray(target_spacing, dtype=float), axis=0)]


def choose_num_levels(extent, preset_levels: int, min_feature_size: int) -> int:
    """The preset's number of levels, reduced while the smallest axis' deepest feature map is too small."""
    levels = preset_levels
    while levels > 1 and min(extent) / 2 ** (levels - 1) < min_feature_size:
        levels -= 1
    return levels


def axis_multiples(stride: int, tasks: dict) -> list[int]:
    """Per axis, lcm of the network stride and every average-pooling task's factor on that axis."""
    multiples = [stride] * 3
    for task in tasks.values():
        degradation = task.get("degradation")
        # a k-space mask has no block grid: it undersamples whatever grid the case has
        if degradation and degradation.get("type", "avgpool") == "avgpool":
            multiples = [math.lcm(m, int(f)) for m, f in zip(multiples, degradation["factor"])]
    return multiples


def round_up(values, multiples) -> list[int]:
    """Each value rounded up to a multiple of the matching multiple (at least one multiple)."""
    return [max(m, int(math.ceil(round(v, 6) / m)) * m) for v, m in zip(values, multiples)]


def scaled_channels(base: int, multipliers, levels: int, scale: float, granularity: int) -> list[int]:
    """Channels per level: base x multiplier x scale, rounded to a multiple of `granularity`."""
    return [max(granularity, int(round(base * m * scale / granularity)) * granularity) for m in multipliers[:levels]]


def norm_groups(channels, max_groups: int) -> int:
    """The largest GroupNorm group count <= max_groups that divides every level's channels."""
    return next(g for g in range(max_groups, 0, -1) if all(c % g == 0 for c in channels))


def attention_levels(plane_shape, levels: int, max_tokens: int) -> list[int]:
    """Levels whose feature map has at most `max_tokens` positions."""
    return [level for level in range(levels)
            if math.prod(math.ceil(s / 2 ** level) for s in plane_shape) <= max_tokens]


def ensembler_in_channels(num_conditions: int, num_experts: int) -> int:
    """Conditions + noisy target + one noise estimate per expert (Eq. 5 input)."""
    return num_conditions + 1 + num_experts


def ensembler_out_channels(num_experts: int) -> int:
    """N - 1 free weight maps (the N-th is minus their sum, so the weights are zero-sum) + 1 residual map."""
    return num_experts


def _unet(preset: Preset, spatial_dims: int, channels: list[int], attention: list[int], *, in_channels: int,
          out_channels: int, dropout: float) -> dict:
    """The network entries every diffusion U-Net of a plan has (see documentation/planning.md)."""
    return {
        "architecture": "diffusion_unet",
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": channels,
        "num_res_blocks": preset.num_res_blocks,
        "attention_levels": attention,
        "mid_attention": (len(channels) - 1) in attention,
        "num_head_channels": preset.num_head_channels,
        "attention": "sdpa",        # torch's fused attention (plans without the key keep the score matrix)
        "time_embed_dim": preset.time_embed_multiplier * channels[0],
        "dropout": dropout,
        "norm_num_groups": norm_groups(channels, preset.norm_num_groups),
        "kernel_size": 3,
    }


def expert_network(preset: Preset, plane_shape, levels: int, in_channels: int, scale: float = 1.0) -> dict:
    """Network dict of a 2D expert whose patch is one slice of `plane_shape`."""
    channels = scaled_channels(preset.expert_base_channels, preset.expert_channel_multipliers, levels, scale,
                               preset.channel_granularity)
    attention = attention_levels(plane_shape, levels, preset.expert_max_attention_tokens)
    return {
        **_unet(preset, 2, channels, attention, in_channels=in_channels, out_channels=1,
                dropout=preset.expert_dropout),
        "gradient_checkpointing": False,
        "context_slices": preset.context_slices,
        "position_channels": preset.position_channels,
        "mask_channels": preset.mask_channels,
        "returns_features": True,
        "zero_init_output": False,
    }


def ensembler_network(preset: Preset, volume_shape, levels: int, in_channels: int, num_experts: int, *,
                      small: bool, scale: float = 1.0) -> dict:
    """Network dict of a 3D ensembler (feature injection entries are added by `feature_injection`)."""
    base = preset.small_ensembler_base_channels if small else preset.ensembler_base_channels
    multipliers = preset.small_ensembler_channel_multipliers if small else preset.ensembler_channel_multipliers
    channels = scaled_channels(base, multipliers, levels, scale, preset.channel_granularity)
    attention = attention_levels(volume_shape, levels, preset.ensembler_max_attention_tokens)
    return {
        **_unet(preset, 3, channels, attention, in_channels=in_channels,
                out_channels=ensembler_out_channels(num_experts), dropout=preset.ensembler_dropout),
        "output_heads": {"weights": num_experts - 1, "residual": 1},
        "gradient_checkpointing": True,
        "zero_init_output": True,
        "feature_injection": [],
    }


def feature_injection(experts: dict, ensembler: dict, volume_shape) -> list[dict]:
    """One entry per (expert, level): how the expert's restacked level-l features reach ensembler level l.

    An expert with slice axis a gives, per slice, C_l x (in-plane size / 2**l) features; restacked along a
    they span the full size on a. A conv with kernel = stride = 2**l along a and 1 in-plane brings them to
    the ensembler's level-l grid (volume / 2**l on every axis) with the ensembler's channels.
    """
    entries = []
    for name, expert in experts.items():
        axis = expert["slice_axis"]
        for level, ens_channels in enumerate(ensembler["channels"]):
            factor = 2 ** level
            kernel = [factor if i == axis else 1 for i in range(3)]
            restacked = [s if i == axis else s // factor for i, s in enumerate(volume_shape)]
            entries.append({
                "expert": name,
                "expert_level": level,
                "ensembler_level": level,
                "stack_axis": axis,
                "kernel_size": kernel,
                "stride": kernel,
                "in_channels": expert["network"]["channels"][level],
                "out_channels": ens_channels,
                "expert_feature_shape": [s // factor for i, s in enumerate(volume_shape) if i != axis],
                "restacked_shape": restacked,
                "ensembler_shape": [s // factor for s in volume_shape],
            })
    return entries
