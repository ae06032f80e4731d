"""Average-pool super-resolution degradation x = A y: non-overlapping block means, with Aᵀ, A⁺ and the projection.

The spatial axes are the trailing len(factor) dims of a tensor (volumes (B, C, X, Y, Z) for a 3-entry factor).
Low-resolution shape = ceil(shape / factor) per axis. When an axis is not divisible by its factor, the last block
along it is partial and A averages only its REAL voxels (no padding values enter the mean). A stays a plain linear
map whose rows (one per block, weight 1/n_b on the n_b voxels of block b) have disjoint supports, so

    A Aᵀ = diag(1 / n_b),   A⁺ = Aᵀ (A Aᵀ)⁻¹,   (A⁺ y)_i = y_b(i)   (nearest-neighbour repetition, cropped),
    (Aᵀ y)_i = y_b(i) / n_b(i),

for partial blocks as for full ones, and A A⁺ = I exactly. A factor of 1 on an axis is the identity on that axis.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_factor(factor, ndim: int = 3) -> tuple[int, ...]:
    """Normalise an int or a sequence of positive ints to a tuple (an int means the same factor on every axis)."""
    if isinstance(factor, (int, np.integer)):
        factor = (int(factor),) * ndim
    factor = tuple(factor)
    if not factor or any(int(f) != f or int(f) < 1 for f in factor):
        raise ValueError(f"avgpool factor must be positive integers, got {factor!r}.")
    return tuple(int(f) for f in factor)


def lowres_shape(hr_shape: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    """Low-resolution spatial shape ceil(hr_shape / factor) per axis."""
    return tuple(-(-int(n) // int(f)) for n, f in zip(hr_shape, factor))


def _block_counts(hr_shape, factor, dtype, device) -> torch.Tensor:
    """n_b: number of real high-resolution voxels in each low-resolution block (outer product of per-axis counts)."""
    counts = torch.ones((), dtype=dtype, device=device)
    for n, f in zip(hr_shape, factor):
        blocks = -(-n // f)
        axis = torch.full((blocks,), float(f), dtype=dtype, device=device)
        axis[-1] = n - (blocks - 1) * f
        counts = counts[..., None] * axis
    return counts


class AvgPoolSR:
    """Average-pool degradation with integer factor per axis; methods A, AT, pinv, project on (..., X, Y, Z)."""

    def __init__(self, factor: int | Sequence[int] = (4, 4, 4)):
        """Store the per-axis factor (an int means the same on all three axes)."""
        self.factor = as_factor(factor)
        self.ndim = len(self.factor)

    def __repr__(self) -> str:
        return f"AvgPoolSR(factor={self.factor})"

    def _spatial(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.dim() < self.ndim:
            raise ValueError(f"{self!r}: tensor of shape {tuple(x.shape)} has fewer than {self.ndim} spatial dims.")
        return tuple(x.shape[-self.ndim:])

    def _hr_shape(self, y: torch.Tensor, hr_shape) -> tuple[int, ...]:
        """Check (or default to shape × factor) the high-resolution spatial shape that y came from."""
        lr = self._spatial(y)
        if hr_shape is None:
            return tuple(n * f for n, f in zip(lr, self.factor))
        hr = tuple(int(n) for n in tuple(hr_shape)[-self.ndim:])
        if len(hr) != self.ndim or lowres_shape(hr, self.factor) != lr:
            raise ValueError(f"{self!r}: low-resolution shape {lr} is not ceil({tuple(hr_shape)} / {self.factor}).")
        return hr

    def lowres_shape(self, hr_shape: Sequence[int]) -> tuple[int, ...]:
        """Low-resolution spatial shape of a high-resolution spatial shape (trailing dims of a full shape)."""
        return lowres_shape(tuple(hr_shape)[-self.ndim:], self.factor)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Block means of the real voxels of each block: shape (..., ceil(X/fx), ceil(Y/fy), ceil(Z/fz))."""
        hr = self._spatial(x)
        lr = lowres_shape(hr, self.factor)
        # Zero padding adds nothing to the block sums; dividing by the real-voxel counts gives the partial means.
        pad = []
        for n, f in zip(reversed(hr), reversed(self.factor)):
            pad += [0, -n % f]
        if any(pad):
            x = F.pad(x, pad)
        lead = tuple(x.shape[:-self.ndim])
        blocked = x.reshape(lead + tuple(v for pair in zip(lr, self.factor) for v in pair))
        sums = blocked.sum(dim=tuple(range(len(lead) + 1, len(lead) + 2 * self.ndim, 2)))
        return sums / _block_counts(hr, self.factor, x.dtype, x.device)

    def block_counts(self, hr_shape: Sequence[int], dtype=torch.float32, device=None) -> torch.Tensor:
        """n_b per low-resolution block of a high-resolution spatial shape (partial last blocks count less)."""
        return _block_counts(tuple(int(n) for n in tuple(hr_shape)[-self.ndim:]), self.factor, dtype, device)

    def _repeat(self, y: torch.Tensor, hr_shape) -> torch.Tensor:
        """Nearest-neighbour repetition of each low-resolution voxel over its block, cropped to hr_shape."""
        dims = range(y.dim() - self.ndim, y.dim())
        for dim, n, f in zip(dims, hr_shape, self.factor):
            if f > 1:
                y = y.repeat_interleave(f, dim=dim).narrow(dim, 0, n)
        return y

    def AT(self, y: torch.Tensor, hr_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Adjoint Aᵀ: (Aᵀy)_i = y_b / n_b over the block's real voxels; hr_shape (X, Y, Z) defaults to shape × f."""
        hr = self._hr_shape(y, hr_shape)
        return self._repeat(y / _block_counts(hr, self.factor, y.dtype, y.device), hr)

    def pinv(self, y: torch.Tensor, hr_shape: Sequence[int] | None = None) -> torch.Tensor:
        """Moore-Penrose inverse A⁺ = Aᵀ(AAᵀ)⁻¹: nearest-neighbour repetition; hr_shape defaults to shape × f."""
        return self._repeat(y, self._hr_shape(y, hr_shape))

    def project(self, x0_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Consistency projection x̂0 − A⁺(A x̂0 − x), after which A(result) = x exactly (up to rounding)."""
        # Diff-Ensembler Sec. 3.1 / 13: y0 <- y0 - A⁺(A y0 - x).
        residual = self.A(x0_hat) - x
        return x0_hat - self.pinv(residual, self._spatial(x0_hat))


def avgpool_downsample(volume, factor: int | Sequence[int]):
    """Block-mean a numpy array or torch tensor over its trailing len(factor) axes (AvgPoolSR.A's convention).

    An int factor means the same factor on the last three axes. Output dtype, the same for numpy and torch (and
    for `degrade_image`): a floating input keeps its dtype, an integer or bool input gives float32.
    numpy input is computed in float64; a torch tensor in its own floating dtype (float64 for integer input).
    """
    operator = AvgPoolSR(factor)
    if isinstance(volume, torch.Tensor):
        if volume.is_floating_point():
            return operator.A(volume)
        return operator.A(volume.to(torch.float64)).to(torch.float32)
    volume = np.asarray(volume)
    out_dtype = volume.dtype if np.issubdtype(volume.dtype, np.floating) else np.float32
    result = operator.A(torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float64))).numpy()
    return result.astype(out_dtype, copy=False)


def upsample_to_grid(lowres: torch.Tensor, factor: Sequence[int], hr_shape: Sequence[int]) -> torch.Tensor:
    """(B, C, x, y, z) -> (B, C, X, Y, Z): trilinear, align_corners=False, low-res voxel i at the centre of block i.

    Interpolating to exactly (x, y, z) * factor puts low-resolution voxel i at high-resolution coordinate
    f * i + (f - 1) / 2, the centre of the block it averages (`operators.lowres_grid`); the result is then
    cropped (a partial last block) or edge-padded to `hr_shape`.
    """
    factor = [int(f) for f in factor]
    full = [n * f for n, f in zip(lowres.shape[2:], factor)]
    up = lowres if factor == [1, 1, 1] else F.interpolate(lowres, size=full, mode="trilinear", align_corners=False)
    hr_shape = [int(n) for n in hr_shape]
    up = up[..., :hr_shape[0], :hr_shape[1], :hr_shape[2]]
    missing = [h - n for h, n in zip(hr_shape, up.shape[2:])]
    if any(missing):
        up = F.pad(up, [p for m in reversed(missing) for p in (0, m)], mode="replicate")
    return up
