"""The 2D expert: a conditional diffusion U-Net over one slice plane (Diff-Ensembler Sec. 3.2).

Input channels, in order (documentation/planning.md): the noisy target slice y_t; every condition
channel's slice with `context_slices` neighbours on each side (2s + 1 channels per condition, in slice
order); `position_channels` position maps; `mask_channels` (0 or 1) the condition's non-zero mask. The expert
returns its noise estimate AND the multi-scale encoder features the ensembler injects.
"""
from .unet import DiffusionUNet


def expert_input_channels(num_conditions: int, context_slices: int = 0, position_channels: int = 0,
                          mask_channels: int = 0) -> int:
    """in_channels of an expert: 1 (y_t) + n_cond (1 + 2 context_slices) + position_channels + mask_channels."""
    return 1 + num_conditions * (1 + 2 * context_slices) + position_channels + mask_channels


def build_expert(network: dict) -> DiffusionUNet:
    """The 2D expert U-Net of a plans network dict; forward(x, t) -> (eps (B, 1, H, W), features).

    The plans' `returns_features` is informational: an expert always returns its features, so false is refused.
    """
    if network.get("spatial_dims") != 2:
        raise ValueError(f"An expert is a 2D network; this network dict has spatial_dims "
                         f"{network.get('spatial_dims')}.")
    if network.get("out_channels") != 1:
        raise ValueError(f"An expert predicts one noise channel; this network dict has out_channels "
                         f"{network.get('out_channels')}.")
    per_condition = 1 + 2 * network.get("context_slices", 0)
    extra = network.get("position_channels", 0) + network.get("mask_channels", 0)
    conditions = network["in_channels"] - 1 - extra
    if conditions < 0 or conditions % per_condition:
        raise ValueError(f"in_channels {network['in_channels']} is not 1 (y_t) + n_cond x {per_condition} "
                         f"(context) + {network.get('position_channels', 0)} (positions) + "
                         f"{network.get('mask_channels', 0)} (mask) for any n_cond; use "
                         f"network_for_task(plans, configuration, task).")
    if not network.get("returns_features", True):
        raise ValueError("An expert always returns its encoder features (the ensembler injects them); the "
                         "network dict's returns_features must be true or absent.")
    return DiffusionUNet.from_plans(network)
