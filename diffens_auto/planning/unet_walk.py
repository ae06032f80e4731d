"""The layer walk of the diffusion U-Nets a plans `network` dict describes, and their exact parameter count.

The walk (guided-diffusion layout: input conv; per level `num_res_blocks` ResBlocks (+ attention), a stride-2
downsample; middle Res-Attn-Res; per level `num_res_blocks + 1` ResBlocks on concat(skip) inputs and a
nearest+conv upsample; output GroupNorm-SiLU-conv) is what the memory model (`memory.py`) counts tensors along.
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Layer:
    """One layer of the U-Net walk: what it consumes and produces, and at which resolution level."""

    kind: str         # input_conv | resblock | attention | downsample | upsample | output
    level: int        # level of the tensor the layer saves (upsample: the level it upsamples to)
    in_channels: int  # channels of its input (decoder ResBlocks: h and skip concatenated)
    out_channels: int
    out_level: int    # level of its output
    pushes_skip: bool = False  # its output is kept for a decoder concat
    pops_skip: int = 0         # channels taken from the skip stack


def unet_layers(network: dict) -> list[Layer]:
    """The layers of the network dict's U-Net in execution order."""
    channels = list(network["channels"])
    levels = len(channels)
    attention = set(network.get("attention_levels", []))
    nrb = network["num_res_blocks"]
    layers = [Layer("input_conv", 0, network["in_channels"], channels[0], 0, pushes_skip=True)]
    skips = [channels[0]]
    ch = channels[0]
    for level in range(levels):
        for _ in range(nrb):
            layers.append(Layer("resblock", level, ch, channels[level], level, pushes_skip=level not in attention))
            ch = channels[level]
            if level in attention:
                layers.append(Layer("attention", level, ch, ch, level, pushes_skip=True))
            skips.append(ch)
        if level < levels - 1:
            layers.append(Layer("downsample", level, ch, ch, level + 1, pushes_skip=True))
            skips.append(ch)
    deepest = levels - 1
    layers.append(Layer("resblock", deepest, ch, ch, deepest))
    if network.get("mid_attention", False):
        layers.append(Layer("attention", deepest, ch, ch, deepest))
    layers.append(Layer("resblock", deepest, ch, ch, deepest))
    for level in reversed(range(levels)):
        for i in range(nrb + 1):
            skip = skips.pop()
            layers.append(Layer("resblock", level, ch + skip, channels[level], level, pops_skip=skip))
            ch = channels[level]
            if level in attention:
                layers.append(Layer("attention", level, ch, ch, level))
            if level > 0 and i == nrb:
                layers.append(Layer("upsample", level - 1, ch, ch, level - 1))
    layers.append(Layer("output", 0, ch, network["out_channels"], 0))
    return layers


def _conv(kernel_volume: int, cin: int, cout: int) -> int:
    return kernel_volume * cin * cout + cout


def _layer_parameters(layer: Layer, network: dict) -> int:
    k = network.get("kernel_size", 3) ** network["spatial_dims"]
    ci, co = layer.in_channels, layer.out_channels
    if layer.kind in ("input_conv", "downsample", "upsample"):
        return _conv(k, ci, co)
    if layer.kind == "resblock":
        emb = network["time_embed_dim"]
        skip = _conv(1, ci, co) if ci != co else 0
        # GN, conv3, Linear(emb -> scale & shift), GN, conv3, optional 1x1 skip conv
        return 2 * ci + _conv(k, ci, co) + (emb * 2 * co + 2 * co) + 2 * co + _conv(k, co, co) + skip
    if layer.kind == "attention":
        return 2 * ci + _conv(1, ci, 3 * ci) + _conv(1, ci, ci)
    if layer.kind == "output":
        return 2 * ci + _conv(k, ci, co)
    raise ValueError(f"unknown layer kind {layer.kind}")


def count_parameters(network: dict) -> int:
    """Exact parameter count of the U-Net a plans `network` dict describes (feature injection included)."""
    emb, base = network["time_embed_dim"], network["channels"][0]
    time_embedding = (base * emb + emb) + (emb * emb + emb)  # sinusoid(base) -> Linear -> SiLU -> Linear
    total = time_embedding + sum(_layer_parameters(layer, network) for layer in unet_layers(network))
    for entry in network.get("feature_injection", []):
        total += _conv(math.prod(entry["kernel_size"]), entry["in_channels"], entry["out_channels"])
    return total
