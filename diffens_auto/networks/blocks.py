"""Building blocks of the diffusion U-Nets (guided-diffusion layout, documentation/planning.md).

Every block is dimension-generic: `spatial_dims` 2 builds the 2D experts' layers, 3 the ensembler's.
Parameter counts follow `diffens_auto.planning.memory.count_parameters` exactly.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_PERIOD = 10000.0   # longest period of the sinusoidal timestep embedding (DDPM / Transformer convention)


def conv_nd(spatial_dims: int, in_channels: int, out_channels: int, kernel_size=3, *, stride=1,
            padding=None) -> nn.Module:
    """A Conv2d or Conv3d; padding defaults to 'same' for odd kernels."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if padding is None:
        padding = kernel_size // 2 if isinstance(kernel_size, int) else [k // 2 for k in kernel_size]
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding)


def zero_(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero and return it."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of integer timesteps t (B,): cosines then sines of t x geometric frequencies."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    frequencies = torch.exp(-math.log(MAX_PERIOD) * exponent)
    angles = t.to(torch.float32)[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimeEmbedding(nn.Module):
    """Sinusoid of dimension `base_channels` -> Linear -> SiLU -> Linear to `embed_dim`."""

    def __init__(self, base_channels: int, embed_dim: int):
        super().__init__()
        self.base_channels = base_channels
        self.linear_1 = nn.Linear(base_channels, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embedding (B, embed_dim) of timesteps t (B,), in the dtype of the layer's weights."""
        # computed in float32 on the weights' device, then cast to their dtype so that a .half() / bfloat16 model
        # runs; the parameters are read rather than .weight so that a LoRA-wrapped linear_1 works too
        weight = next(self.linear_1.parameters())
        sinusoid = timestep_embedding(t.to(weight.device), self.base_channels).to(weight.dtype)
        return self.linear_2(F.silu(self.linear_1(sinusoid)))


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN with time-embedding scale-shift, SiLU-dropout-conv, plus the (1x1-conv) skip.

    The second conv starts at zero (guided-diffusion's zero_module), so a fresh block is the identity
    on its skip path.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embed_dim: int, norm_num_groups: int,
                 *, dropout: float = 0.0, kernel_size: int = 3):
        super().__init__()
        self.norm_1 = nn.GroupNorm(norm_num_groups, in_channels)
        self.conv_1 = conv_nd(spatial_dims, in_channels, out_channels, kernel_size)
        self.emb_proj = nn.Linear(embed_dim, 2 * out_channels)
        self.norm_2 = nn.GroupNorm(norm_num_groups, out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_2 = zero_(conv_nd(spatial_dims, out_channels, out_channels, kernel_size))
        self.skip = (conv_nd(spatial_dims, in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, *spatial), emb (B, E) -> (B, C_out, *spatial)."""
        h = self.conv_1(F.silu(self.norm_1(x)))
        scale_shift = self.emb_proj(F.silu(emb)).reshape(*emb.shape[:1], -1, *([1] * (x.dim() - 2)))
        scale, shift = scale_shift.chunk(2, dim=1)
        h = self.norm_2(h) * (1 + scale) + shift
        h = self.conv_2(self.dropout(F.silu(h)))
        return self.skip(x) + h


ATTENTION_BACKENDS = ("materialised", "sdpa")


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions: GN, 1x1 qkv, softmax(q k^T / sqrt(d)) v, 1x1 proj, residual.

    Heads = max(1, C // num_head_channels). `attention` "materialised" keeps the score matrix (guided-diffusion
    style, what plans made before the switch run and their memory model counts); "sdpa" is torch's
    scaled_dot_product_attention (fused kernels, no T x T scores on CUDA and on the CPU's flash path). The same
    weights, the same function. The projection starts at zero so a fresh block is the identity.
    """

    def __init__(self, channels: int, norm_num_groups: int, num_head_channels: int, attention: str = "materialised"):
        super().__init__()
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention {attention!r}: use one of {', '.join(ATTENTION_BACKENDS)}.")
        self.heads = max(1, channels // num_head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} attention heads.")
        self.attention = attention
        self.norm = nn.GroupNorm(norm_num_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *spatial) -> same shape."""
        b, c, *spatial = x.shape
        tokens = x.reshape(b, c, -1)
        head_channels = c // self.heads
        qkv = self.qkv(self.norm(tokens)).reshape(b * self.heads, 3 * head_channels, -1)
        q, k, v = qkv.split(head_channels, dim=1)
        if self.attention == "sdpa":
            # contiguous (B, h, T, d): the layout the fused kernels take (a 3D or strided call falls back to the
            # score matrix on CPU)
            q, k, v = (part.reshape(b, self.heads, head_channels, -1).transpose(-1, -2).contiguous()
                       for part in (q, k, v))
            attended = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2)         # (B, h, d, T)
        else:
            # scaling q and k by d^-1/4 each (rather than the product by d^-1/2) keeps float16 scores in range
            scale = head_channels ** -0.25
            scores = torch.matmul((q * scale).transpose(1, 2), k * scale)           # (B h, T, T)
            weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
            attended = torch.matmul(v, weights.transpose(1, 2))                      # (B h, d, T)
        return x + self.proj(attended.reshape(b, c, -1)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 conv3: every axis becomes ceil(size / 2)."""

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, kernel_size, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *ceil(spatial / 2))."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to the skip's size, for odd sizes) followed by a conv3."""

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = conv_nd(spatial_dims, channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, *size) with size defaulting to 2 x spatial."""
        if size is None:
            size = [2 * s for s in x.shape[2:]]
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class OutputHead(nn.Module):
    """GroupNorm, SiLU, conv3 to the output channels (optionally zero-initialised)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm_num_groups: int,
                 kernel_size: int = 3, *, zero_init: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, in_channels)
        self.conv = conv_nd(spatial_dims, in_channels, out_channels, kernel_size)
        if zero_init:
            zero_(self.conv)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C_0, *spatial) -> (B, out_channels, *spatial)."""
        return self.conv(F.silu(self.norm(h)))
