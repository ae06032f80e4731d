"""A case's measurement seen slice by slice: what an adaptation step needs of the inverse problem.

`KSpaceSlices` is a recon case on its padded sampling grid: the canonical k-space operator of the unpadded grid
(operators.FileOrderKSpace), its measurement y (file order), the padding and the slice axis A separates along.
For a few slices it gives the slab's own operator and measurement (`FileOrderKSpace.slab`), the in-plane interior
of a slab (the padding has no measurement), and the estimators of `consistency.py` on them.

`PooledSlices` is an SR case on its block-aligned sampling grid: A is average pooling (operators.AvgPoolSR), the
measurement its block means. Any axis separates, but only by whole blocks, so draws take whole blocks of slices
(`block` = the factor along the slice axis) from the part of the region that holds whole blocks. The soft data
consistency has a closed form (`PooledOperator`): A A^T = diag(1 / n_b), so (gamma A^T A + I) x = gamma A^T y + x0
is solved exactly by x = x0 + up(gamma / (n_b + gamma) (y - A x0)), up repeating each block's value over it. The
experts' x0 is in the diffusion space (an SR residual); `offset` and `scale` map it to the target,
target = x0 / scale + offset (the condition's interpolated input), the space the measurement is in.
"""
from __future__ import annotations

from typing import Sequence

import torch

from diffens_auto.adaptation.consistency import TVState, cg_estimate, measurement_loss, tv_admm_estimate
from diffens_auto.operators.avgpool import AvgPoolSR


class _PaddedSlices:
    """A measurement of the unpadded part of a padded sampling grid, seen slab by slab along one slice axis."""

    block = 1       # a per-slice mask constrains each slice alone

    def __init__(self, measurement: torch.Tensor, pads: Sequence[Sequence[int]], slice_axis: int):
        """Keep the measurement, the [(before, after)] pads and the slice axis."""
        self.measurement = measurement
        self.pads = [tuple(int(v) for v in pad) for pad in pads]
        self.slice_axis = int(slice_axis)

    def region(self, padded_shape: Sequence[int]) -> tuple[int, int]:
        """[start, stop) of the measured slices along the slice axis, in padded-grid indices."""
        before, after = self.pads[self.slice_axis]
        return before, int(padded_shape[self.slice_axis]) - after

    def misfit(self, operator, x0: torch.Tensor, y: torch.Tensor, *, gamma: float, cg_steps: int,
               tv: dict | None) -> torch.Tensor:
        """mean |A D(x0) - y|^2 with D the soft estimate (CG), or slab TV-ADMM along the slice axis with `tv`."""
        if tv is None:
            estimate = cg_estimate(operator, x0, y, gamma, cg_steps)
        else:
            estimate, _ = tv_admm_estimate(operator, x0, y, gamma=gamma, cg_steps=cg_steps, dim=2 + self.slice_axis,
                                           **tv)
        return measurement_loss(operator, estimate, y)

    def interior(self, slab: torch.Tensor) -> torch.Tensor:
        """The measured in-plane part of a (B, C, ...) slab whose slice axis holds measured slices only."""
        region = [slice(None)] * 5
        for axis, (before, after) in enumerate(self.pads):
            if axis != self.slice_axis:
                region[2 + axis] = slice(before, slab.shape[2 + axis] - after)
        return slab[tuple(region)]


class KSpaceSlices(_PaddedSlices):
    """A k-space measurement on a padded grid, slab by slab along the slice axis it separates along."""

    def __init__(self, operator, measurement: torch.Tensor, pads: Sequence[Sequence[int]], slice_axis: int):
        """Keep the unpadded grid's operator and measurement, the [(before, after)] pads and the slice axis."""
        super().__init__(measurement, pads, slice_axis)
        self.operator = operator

    def slab(self, indices: torch.Tensor):
        """(operator, measurement) of the padded-grid slices `indices` alone."""
        return self.operator.slab(self.slice_axis, indices - self.pads[self.slice_axis][0], self.measurement)

    def loss(self, x0_slab: torch.Tensor, indices: torch.Tensor, *, gamma: float, cg_steps: int,
             tv: dict | None = None) -> torch.Tensor:
        """The adaptation loss of the prior's x0 on these slices: the misfit of its soft data-consistent estimate
        (CG, or slab TV-ADMM when `tv` holds rho, lam and admm_steps)."""
        operator, y = self.slab(indices)
        x0 = self.interior(x0_slab)
        return self.misfit(operator, x0, y, gamma=gamma, cg_steps=cg_steps, tv=tv)

    def tv_consistency(self, x0_hat: torch.Tensor, *, gamma: float, cg_steps: int, tv: dict,
                       state: TVState | None) -> tuple[torch.Tensor, TVState]:
        """The whole volume's TV-ADMM data consistency (mbir's x0 hook, no grad) and the ADMM state after it."""
        region = tuple(slice(a, n - b) for (a, b), n in zip(self.pads, x0_hat.shape[2:]))
        interior = x0_hat[(slice(None), slice(None), *region)]
        estimate, state = tv_admm_estimate(self.operator, interior, self.measurement, gamma=gamma, cg_steps=cg_steps,
                                           dim=2 + self.slice_axis, state=state, **tv)
        refined = x0_hat.clone()
        refined[(slice(None), slice(None), *region)] = estimate
        return refined, state


class PooledOperator:
    """Average pooling of one high-resolution shape as the estimators see it: A, A^T and the exact soft estimate."""

    def __init__(self, factor: Sequence[int], hr_shape: Sequence[int]):
        """The pooling factor per axis and the spatial shape it pools (partial last blocks allowed)."""
        self.pool, self.hr_shape = AvgPoolSR(factor), tuple(int(n) for n in hr_shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Block means."""
        return self.pool.A(x)

    def AH_real(self, y: torch.Tensor) -> torch.Tensor:
        """A^T: each block's value / n_b over its voxels."""
        return self.pool.AT(y, self.hr_shape)

    def cg_data_consistency(self, x0: torch.Tensor, y: torch.Tensor, gamma: float, num_steps: int = 1) -> torch.Tensor:
        """The exact solution of (gamma A^T A + I) x = gamma A^T y + x0 (what CG converges to; no steps needed)."""
        counts = self.pool.block_counts(self.hr_shape, x0.dtype, x0.device)
        weight = gamma / (counts + gamma)
        return x0 + self.pool.pinv(weight * (y - self.pool.A(x0)), self.hr_shape)

    def project(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The hard projection onto A x = y."""
        return self.pool.project(x0, y)


class PooledSlices(_PaddedSlices):
    """An average-pooled measurement on a padded grid, whole blocks of slices along one axis (module docstring)."""

    def __init__(self, factor: Sequence[int], measurement: torch.Tensor, pads: Sequence[Sequence[int]],
                 slice_axis: int, *, offset: torch.Tensor | None = None, scale: float = 1.0):
        """Keep the factor, the block means of the unpadded grid, the pads, the slice axis and the target map."""
        super().__init__(measurement, pads, slice_axis)
        self.factor = tuple(int(f) for f in factor)
        self.block = self.factor[self.slice_axis]
        self.offset, self.scale = offset, float(scale)

    def region(self, padded_shape: Sequence[int]) -> tuple[int, int]:
        """[start, stop) of the slices in whole measured blocks along the slice axis (padded-grid indices)."""
        before, stop = super().region(padded_shape)
        return before, before + (stop - before) // self.block * self.block

    def to_target(self, x0_slab: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The diffusion space's x0 of the slices `indices` in the measurement's (target) space."""
        if self.offset is None:
            return x0_slab / self.scale
        return x0_slab / self.scale + self.offset.index_select(2 + self.slice_axis, indices.to(self.offset.device))

    def block_means(self, indices: torch.Tensor) -> torch.Tensor:
        """The measurement of the whole blocks that the padded-grid slices `indices` make up."""
        first = indices.reshape(-1, self.block)[:, 0] - self.pads[self.slice_axis][0]
        return self.measurement.index_select(2 + self.slice_axis, (first // self.block).to(self.measurement.device))

    def loss(self, x0_slab: torch.Tensor, indices: torch.Tensor, *, gamma: float, cg_steps: int,
             tv: dict | None = None) -> torch.Tensor:
        """The adaptation loss on whole blocks: the misfit of the soft estimate of their target (or slab TV-ADMM)."""
        x0 = self.interior(self.to_target(x0_slab, indices))
        operator, y = PooledOperator(self.factor, x0.shape[2:]), self.block_means(indices).to(x0.dtype)
        return self.misfit(operator, x0, y, gamma=gamma, cg_steps=cg_steps, tv=tv)

    def tv_consistency(self, target: torch.Tensor, *, gamma: float, cg_steps: int, tv: dict,
                       state: TVState | None) -> tuple[torch.Tensor, TVState]:
        """mbir's data consistency of the whole target (no grad): TV-ADMM along the slice axis, then the hard
        projection (SR samples on the measurement exactly), and the ADMM state after it."""
        region = tuple(slice(a, n - b) for (a, b), n in zip(self.pads, target.shape[2:]))
        interior = target[(slice(None), slice(None), *region)]
        operator = PooledOperator(self.factor, interior.shape[2:])
        measurement = self.measurement.to(interior.dtype)
        estimate, state = tv_admm_estimate(operator, interior, measurement, gamma=gamma, cg_steps=cg_steps,
                                           dim=2 + self.slice_axis, state=state, **tv)
        refined = target.clone()
        refined[(slice(None), slice(None), *region)] = operator.project(estimate, measurement)
        return refined, state
