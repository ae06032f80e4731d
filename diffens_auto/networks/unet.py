"""The diffusion U-Net of the experts (2D) and the ensembler (3D), typed or from a plans `network` dict.

Layout (documentation/planning.md, guided-diffusion): time embedding; input conv3 to C_0; per level
`num_res_blocks` ResBlocks (+ attention), each output kept as a skip, then a stride-2 downsample (also
kept); middle ResBlock, optional attention, ResBlock; per level from the deepest `num_res_blocks + 1`
ResBlocks on concat(h, skip) (+ attention), then nearest x2 + conv3; output GroupNorm, SiLU, conv3.
"""
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import AttentionBlock, Downsample, OutputHead, ResBlock, TimeEmbedding, Upsample, conv_nd

# from_plans passes the first five positionally, so they stay in the constructor's order
REQUIRED_KEYS = ("spatial_dims", "in_channels", "out_channels", "channels", "num_res_blocks", "time_embed_dim",
                 "norm_num_groups")
OPTIONAL_KEYS = ("kernel_size", "dropout", "attention_levels", "num_head_channels", "mid_attention",
                 "gradient_checkpointing", "zero_init_output", "attention")
# the planner (planning/topology.py) and training/experts.py write these as a label (architecture) or for other
# readers (build_expert, Ensembler, ExpertRunner, the data loaders, the memory model); no layer depends on them
INFORMATIONAL_KEYS = ("architecture", "context_slices", "position_channels", "mask_channels", "returns_features",
                      "output_heads", "feature_injection")


class EncoderLevel(nn.Module):
    """One encoder level: ResBlocks (each optionally followed by attention) and the downsample below it."""

    def __init__(self, blocks: list, attentions: list | None, downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsample = downsample


class DecoderLevel(nn.Module):
    """One decoder level: ResBlocks on concat(h, skip) (each optionally followed by attention) and the upsample."""

    def __init__(self, blocks: list, attentions: list | None, upsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.upsample = upsample


class MiddleBlock(nn.Module):
    """ResBlock, optional attention, ResBlock at the deepest level."""

    def __init__(self, block_1: nn.Module, attention: nn.Module | None, block_2: nn.Module):
        super().__init__()
        self.block_1, self.attention, self.block_2 = block_1, attention, block_2


class DiffusionUNet(nn.Module):
    """Conditional diffusion U-Net (guided-diffusion layout), 2D or 3D via `spatial_dims`.

    Build it from a plans `network` dict with `DiffusionUNet.from_plans(network)`, or with typed arguments
    (MONAI `DiffusionModelUNet` style):

    Args:
        spatial_dims: 2 (the experts' slices) or 3 (the ensembler's volumes).
        in_channels: channels of the input x.
        out_channels: channels of the output.
        channels: C_l of each level l, shallowest first; their number is the number of levels L.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more per level); at least 1,
            since a level's features are taken after its last encoder block.
        time_embed_dim: width E of the time embedding fed to every ResBlock.
        norm_num_groups: GroupNorm groups of every normalisation; must divide every C_l.
        kernel_size: kernel of every conv except the 1x1 skips and attention projections.
        dropout: dropout probability inside each ResBlock.
        attention_levels: levels whose ResBlocks (encoder and decoder) are each followed by self-attention.
        num_head_channels: channels per attention head (heads = max(1, C // num_head_channels)); None gives
            max(channels), one head per attention block.
        mid_attention: self-attention between the two middle ResBlocks.
        gradient_checkpointing: recompute every ResBlock and attention block in backward (training mode with
            autograd on only), trading compute for activation memory.
        zero_init_output: start the output conv at zero, so a fresh network outputs zeros.
        attention: "materialised" (the score matrix, the default: plans without the key) or "sdpa" (torch's
            scaled_dot_product_attention); the same weights compute the same function either way.

    forward(x, t, injected) returns (out, features): features[l] is level l's last encoder block output
    (after its attention) before downsampling; injected[l], when given, is added there first (this class checks
    its shape, for every caller).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 num_res_blocks: int, *, time_embed_dim: int, norm_num_groups: int, kernel_size: int = 3,
                 dropout: float = 0.0, attention_levels: Sequence[int] = (), num_head_channels: int | None = None,
                 mid_attention: bool = False, gradient_checkpointing: bool = False, zero_init_output: bool = False,
                 attention: str = "materialised"):
        super().__init__()
        if num_res_blocks < 1:
            raise ValueError("num_res_blocks must be at least 1 (features are taken after a level's last block).")
        dims, channels = spatial_dims, list(channels)
        emb, groups, kernel, nrb = time_embed_dim, norm_num_groups, kernel_size, num_res_blocks
        attention_levels = set(attention_levels)
        head_channels = max(channels) if num_head_channels is None else num_head_channels
        self.spatial_dims, self.num_levels = dims, len(channels)
        self.in_channels, self.out_channels, self.channels = in_channels, out_channels, tuple(channels)
        self.num_res_blocks = nrb
        self.gradient_checkpointing = bool(gradient_checkpointing)

        def res(ci, co):
            return ResBlock(dims, ci, co, emb, groups, dropout=dropout, kernel_size=kernel)

        def attn(c, level):
            return ([AttentionBlock(c, groups, head_channels, attention) for _ in range(nrb)]
                    if level in attention_levels else None)

        # Modules are created in a fixed order (the seeded initialisation depends on it) under fixed names
        # (the state-dict keys checkpoints are saved with); change neither.
        self.time_embedding = TimeEmbedding(channels[0], emb)
        self.input_conv = conv_nd(dims, in_channels, channels[0], kernel)
        skips, ch = [channels[0]], channels[0]
        self.encoder = nn.ModuleList()
        for level, cl in enumerate(channels):
            blocks = []
            for _ in range(nrb):
                blocks.append(res(ch, cl))
                ch = cl
                skips.append(ch)
            downsample = Downsample(dims, ch, kernel) if level < self.num_levels - 1 else None
            if downsample is not None:
                skips.append(ch)
            self.encoder.append(EncoderLevel(blocks, attn(cl, level), downsample))
        middle_attention = AttentionBlock(ch, groups, head_channels, attention) if mid_attention else None
        self.middle = MiddleBlock(res(ch, ch), middle_attention, res(ch, ch))
        self.decoder = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            blocks = []
            for _ in range(nrb + 1):
                blocks.append(res(ch + skips.pop(), channels[level]))
                ch = channels[level]
            attentions = ([AttentionBlock(ch, groups, head_channels, attention) for _ in range(nrb + 1)]
                          if level in attention_levels else None)
            upsample = Upsample(dims, ch, kernel) if level > 0 else None
            self.decoder.append(DecoderLevel(blocks, attentions, upsample))
        assert not skips, "every encoder skip is consumed by one decoder block"
        self.output = OutputHead(dims, ch, out_channels, groups, kernel, zero_init=bool(zero_init_output))

    @classmethod
    def from_plans(cls, network: dict) -> "DiffusionUNet":
        """The U-Net of a plans `network` dict (documentation/planning.md), keys as the planner writes them.

        The keys of the constructor's arguments are passed by name (one the dict leaves out gets the default).
        The planner's other keys (INFORMATIONAL_KEYS: the label `architecture`, the experts' context_slices /
        position_channels / mask_channels / returns_features, the ensembler's output_heads / feature_injection) are ignored.
        A ValueError names every missing required key, or else every key of neither kind.
        """
        missing = [key for key in REQUIRED_KEYS if key not in network]
        if missing:
            raise ValueError(f"The network dict lacks {missing}; it must come from the plans "
                             f"(documentation/planning.md).")
        unknown = [key for key in network if key not in REQUIRED_KEYS + OPTIONAL_KEYS + INFORMATIONAL_KEYS]
        if unknown:
            raise ValueError(f"The network dict has unknown key(s) {unknown}; it must come from the plans "
                             f"(documentation/planning.md), whose network dicts have only "
                             f"{list(REQUIRED_KEYS + OPTIONAL_KEYS + INFORMATIONAL_KEYS)}.")
        return cls(*(network[key] for key in REQUIRED_KEYS[:5]),
                   **{key: network[key] for key in REQUIRED_KEYS[5:] + OPTIONAL_KEYS if key in network})

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """Run a ResBlock / attention block, recomputing it in backward when checkpointing is active."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    @staticmethod
    def _add_injected(injected, level: int, h: torch.Tensor) -> torch.Tensor:
        """h plus injected[level], which must have h's exact shape (no broadcasting); h itself when None."""
        extra = injected[level] if injected is not None and level < len(injected) else None
        if extra is None:
            return h
        if extra.shape != h.shape:
            raise ValueError(f"injected[{level}] has shape {tuple(extra.shape)}, but level {level}'s features have "
                             f"shape {tuple(h.shape)}; the input's axes must be multiples of 2^(levels-1).")
        return h + extra

    def forward(self, x: torch.Tensor, t: torch.Tensor, injected: list | None = None):
        """x (B, in_channels, *spatial), t (B,) integer timesteps -> (out (B, out_channels, *spatial), features)."""
        if injected is not None and len(injected) > self.num_levels:
            raise ValueError(f"injected has {len(injected)} entries for a {self.num_levels}-level U-Net.")
        emb = self.time_embedding(t)
        h = self.input_conv(x)
        skips, features = [h], []
        for level, stage in enumerate(self.encoder):
            for i, block in enumerate(stage.blocks):
                h = self._run(block, h, emb)
                if stage.attentions is not None:
                    h = self._run(stage.attentions[i], h)
                if i == len(stage.blocks) - 1:
                    h = self._add_injected(injected, level, h)
                    features.append(h)
                skips.append(h)
            if stage.downsample is not None:
                h = stage.downsample(h)
                skips.append(h)
        h = self._run(self.middle.block_1, h, emb)
        if self.middle.attention is not None:
            h = self._run(self.middle.attention, h)
        h = self._run(self.middle.block_2, h, emb)
        for stage in self.decoder:
            for i, block in enumerate(stage.blocks):
                # the concat stays outside the (checkpointed) block, so the block keeps only its input
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
                if stage.attentions is not None:
                    h = self._run(stage.attentions[i], h)
            if stage.upsample is not None:
                h = stage.upsample(h, size=skips[-1].shape[2:])
        return self.output(h), features
