"""An explicit memory model for the diffusion U-Nets the plans describe (documentation/planning.md).

The model walks the U-Net of a plans `network` dict layer by layer (guided-diffusion layout: input
conv; per level `num_res_blocks` ResBlocks (+ attention), a stride-2 downsample; middle Res-Attn-Res;
per level `num_res_blocks + 1` ResBlocks on concat(skip) inputs and a nearest+conv upsample; output
GroupNorm-SiLU-conv) and counts, for each layer, the tensors autograd keeps for the backward pass.
Byte sizes follow CUDA autocast: GroupNorm and softmax run in float32, so the tensors on the
normalisation path are 4 bytes per element, while conv/linear/matmul inputs are saved in the
activation dtype. Parameters and their optimizer state are float32.
"""
import math
from dataclasses import dataclass, fields

from .unet_walk import Layer, count_parameters, unet_layers  # noqa: F401 - also this module's API

BYTES_PER_GB = 1024 ** 3
NORM_BYTES = 4            # GroupNorm, SiLU after it and softmax run in float32 under autocast
MASK_BYTES = 1            # CUDA dropout keeps a boolean mask
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# per voxel of a k-space task's volume while DDS samples it: the measurement y, the FFT's complex input and
# output (complex64, 8 bytes each), and CG's right-hand side and four vectors x, r, p, (gamma A^H A + I) p (float32)
KSPACE_BYTES_PER_VOXEL = 3 * 8 + 5 * 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component of one training or inference run; the total is their sum."""

    parameters: int = 0            # float32 weights of the network being trained / run
    gradients: int = 0             # float32 gradient per trained parameter
    adam_state: int = 0            # Adam's two float32 moments
    ema: int = 0                   # float32 EMA copy of the weights
    weight_copies: int = 0         # autocast's low-precision copies of the weights
    activations: int = 0           # tensors saved for backward (training) or the forward peak (inference)
    activation_gradients: int = 0  # gradients in flight while the largest block runs backward
    expert_parameters: int = 0     # frozen experts' float32 weights (ensembler)
    expert_forward: int = 0        # one slice batch's forward peak of the frozen experts (no grad)
    injected_features: int = 0     # experts' restacked feature volumes fed to the injection convs
    volume_buffers: int = 0        # inputs, targets, noise, restacked noise estimates, sampling state
    measurement_buffers: int = 0   # a k-space task's sampling: the measurement and DDS's data-consistency state
    workspace: int = 0             # fixed allowance: CUDA context, cuDNN workspaces, allocator slack

    @property
    def total_bytes(self) -> int:
        """Sum of all components."""
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def total_gb(self) -> float:
        """Sum of all components in GB (2**30 bytes)."""
        return self.total_bytes / BYTES_PER_GB

    def as_gb(self) -> dict:
        """Every non-zero component in GB (rounded to 3 decimals), plus the total."""
        parts = {f.name: round(getattr(self, f.name) / BYTES_PER_GB, 3) for f in fields(self)
                 if getattr(self, f.name)}
        parts["total"] = round(self.total_gb, 3)
        return parts


def activation_bytes(dtype: str) -> int:
    """Bytes per element of an activation saved for a conv/linear/matmul in `dtype`."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype '{dtype}' for the memory model; use one of {sorted(DTYPE_BYTES)}.") from None


def level_voxels(shape, level: int) -> int:
    """Positions of one sample's feature map at `level` (each level halves every axis, rounding up)."""
    return math.prod(math.ceil(s / 2 ** level) for s in shape)


def _heads(network: dict, channels: int) -> int:
    return max(1, channels // network.get("num_head_channels", channels))


def _sdpa(network: dict) -> bool:
    return network.get("attention") == "sdpa"     # fused attention: no score matrix


def _saved_per_voxel(layer: Layer, network: dict, a: int) -> float:
    """Bytes per voxel (one sample) that `layer` saves for backward, attention scores excluded."""
    ci, co = layer.in_channels, layer.out_channels
    if layer.kind in ("input_conv", "downsample", "upsample"):
        return ci * a                                   # a conv saves its input
    if layer.kind == "resblock":
        mask = MASK_BYTES if network.get("dropout", 0.0) > 0 else 0
        # GN1 input, SiLU input, conv1 input | GN2 input, scale-shift input, SiLU input, mask, conv2 input
        saved = ci * (NORM_BYTES + NORM_BYTES + a) + co * (3 * NORM_BYTES + a) + co * mask
        if ci != co and a != NORM_BYTES:
            saved += ci * a                             # 1x1 skip conv keeps a low-precision copy of x
        return saved
    if layer.kind == "attention":
        # GN input, qkv-conv input, qkv (sdpa: contiguous q, k, v), scaled q and k or sdpa's output, proj input
        return ci * NORM_BYTES + ci * a + 3 * ci * a + (1 if _sdpa(network) else 2) * ci * a + ci * a
    if layer.kind == "output":
        return ci * (2 * NORM_BYTES + a) + 2 * co * NORM_BYTES   # GN, SiLU, conv; the MSE loss keeps output+target
    raise ValueError(f"unknown layer kind {layer.kind}")


def _attention_scores(layer: Layer, network: dict, tokens: int, a: int, saved: bool) -> float:
    """Bytes of one sample's attention scores (tokens^2 x heads): kept for backward, or peak in a forward; sdpa
    keeps one float32 log-sum-exp per token and head for backward and only tiles of scores in a forward."""
    if _sdpa(network):
        return tokens * _heads(network, layer.in_channels) * NORM_BYTES if saved else 0.0
    per_score = NORM_BYTES + (a if a != NORM_BYTES else 0)  # float32 softmax output + its cast for the matmul
    if not saved:
        per_score = a + NORM_BYTES + (NORM_BYTES if a != NORM_BYTES else 0)  # pre-softmax, float copy, softmax
    return tokens * tokens * _heads(network, layer.in_channels) * per_score


def _layer_saved(layer: Layer, network: dict, shape, a: int) -> float:
    """Bytes one sample's pass through `layer` saves for backward."""
    n = level_voxels(shape, layer.level)
    saved = _saved_per_voxel(layer, network, a) * n
    if layer.kind == "attention":
        saved += _attention_scores(layer, network, n, a, saved=True)
    return saved


def _checkpoint_input(layer: Layer, network: dict, shape, a: int) -> float:
    """Bytes a layer keeps when ResBlocks and attention blocks are gradient-checkpointed."""
    if layer.kind in ("resblock", "attention"):
        return layer.in_channels * a * level_voxels(shape, layer.level)  # only the block input
    return _layer_saved(layer, network, shape, a)


def training_activations(network: dict, shape, batch_size: int, dtype: str) -> tuple[int, int]:
    """(activations, activation gradients) in bytes at the peak of one training step on `shape` patches.

    Forward keeps, per layer, its saved tensors (or, for checkpointed ResBlocks and attention blocks,
    only the block input). Backward then runs the layers in reverse: a checkpointed block first
    recomputes its saved tensors; the gradient of its output is alive meanwhile, and so are the
    gradients of skip tensors already handed back by decoder concats but not yet consumed by the
    encoder layer that produced them. The peak is the largest such moment.
    """
    a = activation_bytes(dtype)
    layers = unet_layers(network)
    checkpointed = network.get("gradient_checkpointing", False)
    kept = [(_checkpoint_input(layer, network, shape, a) if checkpointed else _layer_saved(layer, network, shape, a))
            for layer in layers]
    producer, stack = {}, []
    for index, layer in enumerate(layers):
        if layer.pops_skip:
            producer[index] = stack.pop()
        if layer.pushes_skip:
            stack.append(index)
    alive, pending, released = sum(kept), 0.0, {}
    peak = (0.0, 0.0)
    for index in reversed(range(len(layers))):
        layer = layers[index]
        pending -= released.pop(index, 0.0)
        recompute = (_layer_saved(layer, network, shape, a)
                     if checkpointed and layer.kind in ("resblock", "attention") else 0.0)
        grad_out = layer.out_channels * a * level_voxels(shape, layer.out_level)
        moment = (alive + recompute, pending + grad_out)
        if sum(moment) > sum(peak):
            peak = moment
        alive -= kept[index]
        if layer.pops_skip:
            skip_grad = layer.pops_skip * a * level_voxels(shape, layer.level)
            pending += skip_grad
            released[producer[index]] = released.get(producer[index], 0.0) + skip_grad
    return int(peak[0] * batch_size), int(peak[1] * batch_size)


def _forward_transient(layer: Layer, network: dict, shape, a: int) -> float:
    """Bytes of one sample's intermediates alive at once inside `layer` in a no-grad forward."""
    ci, co = layer.in_channels, layer.out_channels
    n_in, n_out = level_voxels(shape, layer.level), level_voxels(shape, layer.out_level)
    if layer.kind == "input_conv":
        return ci * (NORM_BYTES + a) * n_in + co * a * n_out
    if layer.kind == "resblock":
        # start: input, its float32 copy and the GroupNorm output (+ the pre-concat tensor); end: input,
        # the float32 SiLU output, conv output and the residual sum
        return max(ci * (2 * a + 2 * NORM_BYTES), ci * a + co * (2 * a + NORM_BYTES)) * n_in
    if layer.kind == "attention":
        fused = 4 * ci * a if _sdpa(network) else 0      # sdpa's contiguous q, k, v and output
        return (4 * ci * a + ci * NORM_BYTES + fused) * n_in + _attention_scores(layer, network, n_in, a, saved=False)
    if layer.kind == "downsample":
        return ci * a * n_in + co * a * n_out
    if layer.kind == "upsample":
        return ci * a * level_voxels(shape, layer.level + 1) + 2 * co * a * n_out
    if layer.kind == "output":
        return ci * (a + 2 * NORM_BYTES) * n_in + co * NORM_BYTES * n_out
    raise ValueError(f"unknown layer kind {layer.kind}")


def forward_peak(network: dict, shape, batch_size: int, dtype: str) -> int:
    """Peak bytes of a no-grad forward pass: the live skip tensors plus the busiest layer's intermediates."""
    a = activation_bytes(dtype)
    skips = []
    peak = 0.0
    for layer in unet_layers(network):
        if layer.pops_skip:
            skips.pop()
        peak = max(peak, sum(skips) + _forward_transient(layer, network, shape, a))
        if layer.pushes_skip:
            skips.append(layer.out_channels * a * level_voxels(shape, layer.out_level))
    return int(peak * batch_size)


def _parameter_state(network: dict, dtype: str, trained: bool, ema: bool) -> dict:
    n = count_parameters(network)
    a = activation_bytes(dtype)
    state = {"parameters": 4 * n, "weight_copies": n * a if a != 4 else 0}
    if trained:
        state.update(gradients=4 * n, adam_state=8 * n, ema=4 * n if ema else 0)
    return state


def _slice_shape(volume_shape, slice_axis: int) -> tuple[int, ...]:
    return tuple(s for axis, s in enumerate(volume_shape) if axis != slice_axis)


def _injected_feature_bytes(network: dict, volume_shape, a: int) -> int:
    """Bytes of the experts' restacked feature volumes for one ensembler input of `volume_shape`."""
    total = 0
    for entry in network.get("feature_injection", []):
        level, axis = entry["expert_level"], entry["stack_axis"]
        restacked = [s if i == axis else math.ceil(s / 2 ** level) for i, s in enumerate(volume_shape)]
        total += entry["in_channels"] * math.prod(restacked) * a
    return total


def _expert_terms(configuration: dict, experts: dict, volume_shape, slice_batch_size: int, dtype: str) -> dict:
    """Frozen experts' weights and their largest slice-batch forward peak on `volume_shape`."""
    names = configuration.get("experts", [])
    missing = [name for name in names if name not in experts]
    if missing:
        raise ValueError(f"The memory estimate of an ensembler needs the configurations of its experts {missing}.")
    params = sum(4 * count_parameters(experts[name]["network"]) for name in names)
    forward = max((forward_peak(experts[name]["network"], _slice_shape(volume_shape, experts[name]["slice_axis"]),
                                slice_batch_size, dtype) for name in names), default=0)
    return {"expert_parameters": params, "expert_forward": forward}


def _mask_channels(configuration: dict, experts: dict) -> int:
    """1 when any expert of an ensembler configuration takes the condition's non-zero mask for any task (the
    loader then sends it in the experts' frame), else 0."""
    return int(any(experts[name]["network"].get("mask_channels", 0)
                   or any(experts[name].get("mask_channels_per_task", {}).values())
                   for name in configuration.get("experts", []) if name in experts))


def _frame_channels(configuration: dict, experts: dict) -> int:
    """Channels of the experts' frame an ensembler holds over the volume at prediction: coordinates and mask."""
    names = [name for name in configuration.get("experts", []) if name in experts]
    if not any(experts[n]["network"].get("position_channels", 0) or experts[n]["network"].get("mask_channels", 0)
               for n in names):
        return 0
    return 3 + _mask_channels(configuration, experts)


def _condition_channels(configuration: dict) -> int:
    network = configuration["network"]
    if configuration.get("kind") == "ensembler":
        return network["in_channels"] - 1 - len(configuration.get("experts", []))
    return network["in_channels"] - 1


def estimate_training_memory(configuration: dict, dtype: str, *, experts: dict | None = None,
                             slice_batch_size: int | None = None, workspace_gb: float = 0.0, ema: bool = True,
                             shape=None) -> MemoryEstimate:
    """Peak GPU memory of one training step of a plans configuration (expert or ensembler).

    `shape` defaults to an ensembler's fine_tune_shape, else the patch_size; `slice_batch_size` (slices
    per frozen-expert call) to the configuration's expert_slice_batch_size, else 1.
    """
    network = configuration["network"]
    if slice_batch_size is None:
        slice_batch_size = configuration.get("expert_slice_batch_size", 1)
    batch = configuration["batch_size"]
    if shape is None:
        shape = configuration.get("fine_tune_shape") or configuration["patch_size"]
    a = activation_bytes(dtype)
    saved, in_flight = training_activations(network, shape, batch, dtype)
    parts = _parameter_state(network, dtype, trained=True, ema=ema)
    parts.update(activations=saved, activation_gradients=in_flight, workspace=int(workspace_gb * BYTES_PER_GB))
    voxels = math.prod(shape)
    if configuration.get("kind") == "ensembler":
        n_experts = len(configuration.get("experts", []))
        parts.update(_expert_terms(configuration, experts or {}, shape, slice_batch_size, dtype))
        parts["injected_features"] = _injected_feature_bytes(network, shape, a) * batch
        # target, noise, y_t, conditions, the experts' frame (the loader always sends the coordinates) and one
        # restacked noise estimate per expert, float32
        frame = 3 + _mask_channels(configuration, experts or {})
        parts["volume_buffers"] = (3 + _condition_channels(configuration) + frame + n_experts) * voxels * 4 * batch
    else:
        parts["volume_buffers"] = (network["in_channels"] + 2) * voxels * 4 * batch
    return MemoryEstimate(**parts)


def estimate_inference_memory(configuration: dict, dtype: str, *, volume_shape, experts: dict | None = None,
                              slice_batch_size: int = 1, workspace_gb: float = 0.0,
                              kspace: bool = False) -> MemoryEstimate:
    """Peak GPU memory of sampling one `volume_shape` volume with a plans configuration.

    `kspace`: the plans have a reconstruction task, whose sampling also holds the measurement and the state of
    DDS's conjugate-gradient data consistency over the whole volume (`KSPACE_BYTES_PER_VOXEL`).
    """
    network = configuration["network"]
    a = activation_bytes(dtype)
    parts = _parameter_state(network, dtype, trained=False, ema=False)
    parts["workspace"] = int(workspace_gb * BYTES_PER_GB)
    volume = math.prod(volume_shape)
    if kspace:
        parts["measurement_buffers"] = KSPACE_BYTES_PER_VOXEL * volume
    n_cond = _condition_channels(configuration)
    if configuration.get("kind") == "ensembler":
        window = configuration["fine_tune_shape"] if configuration.get("patch_wise") else volume_shape
        n_experts = len(configuration.get("experts", []))
        parts["activations"] = forward_peak(network, window, 1, dtype)
        parts.update(_expert_terms(configuration, experts or {}, window, slice_batch_size, dtype))
        parts["injected_features"] = _injected_feature_bytes(network, window, a)
        # whole volume: conditions, y_t, y0 estimate, consistency temp, sliding-window sum and weights, the
        # experts' frame; per window: one noise estimate per expert
        accumulators = 2 if configuration.get("patch_wise") else 0
        frame = _frame_channels(configuration, experts or {})
        parts["volume_buffers"] = ((n_cond + 3 + accumulators + frame) * volume + n_experts * math.prod(window)) * 4
    else:
        plane = _slice_shape(volume_shape, configuration["slice_axis"])
        parts["activations"] = forward_peak(network, plane, slice_batch_size, dtype)
        # conditions, y_t, y0 estimate, restacked noise estimate, consistency temp, float32
        parts["volume_buffers"] = (n_cond + 4) * volume * 4
    return MemoryEstimate(**parts)
