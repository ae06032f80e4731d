"""The one Gaussian-weighted sliding window: run a volume function on windows and blend them (nnU-Net style).

Wrapped around any ensembling strategy by `strategies.Windowed`: for the learned strategy when the plan is
patch_wise (the ensembler and the experts run on windows of `fine_tune_shape`), and by prediction for volumes
larger than the crop.

Border handling: per axis the windows start at evenly spaced positions from 0 to size - window, so the
first and the last window are flush with the volume's borders and the volume is never padded or cut when
it is at least the window. An axis shorter than the window is padded (constant, split evenly before and
after, like nnU-Net) to the window, and the result is cropped back to the original extent.
"""
import math

import torch

from diffens_auto.diffusion.padding import pad_evenly, unpad


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start positions along one axis: the fewest windows with a step <= window * (1 - overlap), last one flush."""
    if size <= window:
        return [0]
    target_step = window * (1.0 - overlap)
    num = math.ceil((size - window) / target_step) + 1
    step = (size - window) / (num - 1)
    return [int(round(step * i)) for i in range(num)]


def gaussian_importance(window, sigma_scale: float = 0.125, device=None, dtype=torch.float32,
                        floor: float = 1e-6) -> torch.Tensor:
    """(wx, wy, wz) Gaussian centred on the window, sigma = sigma_scale * window, maximum 1, at least `floor`."""
    axes = []
    for w in window:
        coords = torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2.0
        sigma = max(sigma_scale * w, 1e-8)
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    importance = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    importance = importance / importance.max()
    # the floor keeps voxels that only window corners reach from dividing by a vanishing weight sum
    return importance.clamp_min(floor).to(dtype)


def sliding_window(fn, inputs, window, overlap: float = 0.5, sigma_scale: float = 0.125, *,
                   out_channels: int | None = None) -> torch.Tensor:
    """fn(*window crops) -> (B, C_out, wx, wy, wz), blended over windows covering the volume: sum(g f) / sum(g).

    `inputs` are (B or 1, C, X, Y, Z) tensors sharing X, Y, Z. Windows start at `window_starts` per axis; a
    single window covering the volume calls fn once without weighting. Accumulates in float32 (float64
    stays float64) and returns the blend in fn's dtype (bfloat16 / float16 predictions give the same out).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    window = tuple(int(w) for w in window)
    spatial = tuple(inputs[0].shape[2:])
    if len(window) != 3 or any(w < 1 for w in window):
        raise ValueError(f"window must be three positive sizes, got {window}.")
    if any(tuple(x.shape[2:]) != spatial for x in inputs):
        shapes = [tuple(x.shape) for x in inputs]
        raise ValueError(f"sliding_window inputs must share their spatial shape, got {shapes}.")
    padded = [pad_evenly(x, [max(w - n, 0) for n, w in zip(spatial, window)]) for x in inputs]
    pads = padded[0][1]
    inputs = [p[0] for p in padded]
    size = tuple(inputs[0].shape[2:])
    starts = [window_starts(s, w, overlap) for s, w in zip(size, window)]
    if all(len(s) == 1 for s in starts) and size == window:
        output = fn(*inputs)
        return _crop_back(output, pads, out_channels)

    importance, total, weight, out_dtype = None, None, None, None
    for sx in starts[0]:
        for sy in starts[1]:
            for sz in starts[2]:
                region = (slice(None), slice(None), slice(sx, sx + window[0]), slice(sy, sy + window[1]),
                          slice(sz, sz + window[2]))
                prediction = fn(*(x[region] for x in inputs))
                if total is None:
                    out_dtype = prediction.dtype
                    dtype = torch.promote_types(prediction.dtype, torch.float32)
                    importance = gaussian_importance(window, sigma_scale, prediction.device, dtype)
                    total = prediction.new_zeros((prediction.shape[0], prediction.shape[1], *size), dtype=dtype)
                    weight = torch.zeros(size, device=prediction.device, dtype=dtype)
                total[region].add_(prediction.to(dtype) * importance)
                weight[region[2:]].add_(importance)
    return _crop_back((total / weight).to(out_dtype), pads, out_channels)


def _crop_back(output, pads, out_channels):
    """Undo the padding of short axes and check the channel count."""
    if out_channels is not None and output.shape[1] != out_channels:
        raise ValueError(f"sliding_window: fn returned {output.shape[1]} channels, expected {out_channels}.")
    if not any(before or after for before, after in pads):
        return output
    return unpad(output, pads).contiguous()
