"""Networks of Diff-Ensembler: the diffusion U-Net, 2D experts, the 3D ensembler and LoRA (pure tensor code)."""
from .blocks import AttentionBlock, ResBlock, TimeEmbedding, timestep_embedding
from .ensembler import Ensembler, combine_expert_eps
from .expert import build_expert, expert_input_channels
from .lora import LoRAConv, LoRALinear, inject_lora, lora_parameters, merge_lora, remove_lora
from .unet import DiffusionUNet

__all__ = [
    "AttentionBlock", "ResBlock", "TimeEmbedding", "timestep_embedding",
    "DiffusionUNet", "build_expert", "expert_input_channels",
    "Ensembler", "combine_expert_eps",
    "LoRAConv", "LoRALinear", "inject_lora", "lora_parameters", "merge_lora", "remove_lora",
]
