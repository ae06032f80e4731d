"""Planner presets: the numbers that differ between a paper-scale plan and a CPU-sized one.

The planner code is the same for every preset; a preset only supplies starting points (channels,
levels, batch sizes, epochs) and limits (minimum feature size, attention token limit, memory
allowance). Values marked "paper" come from Diff-Ensembler Tab. 7, 9, 10, 11; "public code" from the
authors' released code (see METHOD.md).
"""
from dataclasses import dataclass, field, replace

from diffens_auto.errors import DiffensError


@dataclass(frozen=True)
class Preset:
    """Starting points and limits for one planner preset."""

    name: str
    plans_name: str
    dtype: str                       # activation dtype the estimates assume (autocast dtype on CUDA)
    workspace_gb: float              # CUDA context, cuDNN workspaces and allocator slack, added to every estimate
    num_levels: int                  # resolution levels of every U-Net (paper: 4)
    min_feature_size: int            # smallest allowed feature map edge at the deepest level
    expert_base_channels: int        # paper 64
    expert_channel_multipliers: tuple[int, ...]    # paper 1-2-4-8
    ensembler_base_channels: int     # paper 64
    ensembler_channel_multipliers: tuple[int, ...]  # paper 64-128-192-256 = 64 x 1-2-3-4
    small_ensembler_base_channels: int  # paper 32
    small_ensembler_channel_multipliers: tuple[int, ...]  # paper 32-64-64-128 = 32 x 1-2-2-4
    num_res_blocks: int              # paper 2
    time_embed_multiplier: int       # time_embed_dim = multiplier x base channels (paper 256 = 4 x 64)
    num_head_channels: int
    norm_num_groups: int             # at most this many GroupNorm groups (the largest count dividing every level's channels)
    channel_granularity: int         # channels per level are a multiple of this (also after scaling)
    expert_dropout: float            # public code 0.2
    ensembler_dropout: float
    expert_max_attention_tokens: int  # attention only where a feature map has at most this many positions
    ensembler_max_attention_tokens: int  # 0: no attention in the 3D ensembler (paper Tab. 10)
    context_slices: int              # 2.5D (MADM): neighbouring slices on each side per condition channel
    position_channels: int           # global position channels fed to the experts (public code: 3)
    mask_channels: int               # the condition's non-zero mask fed to the experts (public code: 1; MT only)
    expert_batch_size: int           # paper 4
    min_batch_size: int
    ensembler_batch_size: int        # paper 1
    channel_scales: tuple[float, ...]  # tried in order when a configuration does not fit the budget
    ensembler_pretrain_patch: int    # edge of the cubic pretraining patch (capped by the crop)
    ensembler_experts: tuple[str, ...]  # experts the ensembler fuses (paper: transverse + sagittal)
    max_slice_batch_size: int        # largest number of slices an expert runs at once over a volume
    ensembler_lambda: float          # lambda of Eq. 6
    num_inference_steps: int
    expert_training: dict = field(default_factory=dict)
    ensembler_training: dict = field(default_factory=dict)


DEFAULT = Preset(
    name="default",
    plans_name="diffensPlans",
    dtype="bfloat16",
    workspace_gb=1.0,
    num_levels=4,
    min_feature_size=8,
    expert_base_channels=64,
    expert_channel_multipliers=(1, 2, 4, 8),
    ensembler_base_channels=64,
    ensembler_channel_multipliers=(1, 2, 3, 4),
    small_ensembler_base_channels=32,
    small_ensembler_channel_multipliers=(1, 2, 2, 4),
    num_res_blocks=2,
    time_embed_multiplier=4,
    num_head_channels=32,
    norm_num_groups=32,
    channel_granularity=16,
    expert_dropout=0.2,
    ensembler_dropout=0.0,
    expert_max_attention_tokens=32 * 32,
    ensembler_max_attention_tokens=0,
    # the authors' experts see neighbouring LR slices and where a slice sits; on the demo both lifted every
    # diffusion row by 0.1-0.4 dB (documentation/benchmarks.md)
    context_slices=2,
    position_channels=3,
    # the released experts' non-zero mask: planned for tasks whose condition has no pooled target (MT), where it
    # lifted every method at the last point of an 8-minute learning curve; SR gains nothing from it (its pooled
    # blocks already say where the input is 0) and lost 0.13-0.17 dB on the demo (documentation/benchmarks.md)
    mask_channels=1,
    expert_batch_size=4,
    min_batch_size=1,
    ensembler_batch_size=1,
    channel_scales=(1.0, 0.75, 0.5),
    ensembler_pretrain_patch=96,
    ensembler_experts=("2d_axial", "2d_sagittal"),
    max_slice_batch_size=32,
    ensembler_lambda=1.0,
    num_inference_steps=50,
    expert_training={"lr": 5e-5, "optimizer": "adam", "weight_decay": 0.0, "ema_decay": 0.9999,
                     "num_epochs": 1000, "iterations_per_epoch": 250, "val_iterations": 50,
                     "checkpoint_every": 50},
    ensembler_training={"lr": 1e-4, "optimizer": "adam", "weight_decay": 0.0, "ema_decay": 0.9999,
                        "pretrain_epochs": 400, "finetune_epochs": 200,
                        "iterations_per_epoch": 250, "val_iterations": 25, "checkpoint_every": 50},
)

# Only what differs from the paper scale: CPU-sized networks and runs for tests and the demo.
TINY = replace(
    DEFAULT,
    name="tiny",
    plans_name="diffensPlans_tiny",
    dtype="float32",
    workspace_gb=0.0,
    num_levels=3,
    min_feature_size=4,
    expert_base_channels=8,
    expert_channel_multipliers=(1, 2, 4),
    ensembler_base_channels=8,
    ensembler_channel_multipliers=(1, 2, 3),
    small_ensembler_base_channels=4,
    small_ensembler_channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    num_head_channels=8,
    norm_num_groups=4,
    channel_granularity=4,
    expert_dropout=0.0,
    expert_max_attention_tokens=12 * 12,
    channel_scales=(1.0, 0.5),
    ensembler_pretrain_patch=24,
    max_slice_batch_size=16,
    num_inference_steps=10,
    expert_training={**DEFAULT.expert_training, "lr": 5e-4, "ema_decay": 0.99, "num_epochs": 2,
                     "iterations_per_epoch": 10, "val_iterations": 2, "checkpoint_every": 1},
    ensembler_training={**DEFAULT.ensembler_training, "lr": 5e-4, "ema_decay": 0.99, "pretrain_epochs": 1,
                        "finetune_epochs": 1, "iterations_per_epoch": 5, "val_iterations": 1, "checkpoint_every": 1},
)

PRESETS: dict[str, Preset] = {"default": DEFAULT, "tiny": TINY}


class UnknownPresetError(DiffensError, ValueError):
    """Raised for a preset name the planner does not know."""


def get_preset(name: str) -> Preset:
    """Return the preset called `name`, or raise an error listing the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(
            f"Unknown planner preset '{name}'. Known presets: {', '.join(sorted(PRESETS))} "
            "(pass one of them with -pl)."
        ) from None
