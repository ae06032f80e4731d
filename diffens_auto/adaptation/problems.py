"""A case's measurement seen slice by slice: what an adaptation step needs of the inverse problem.

`KSpaceSlices` is a recon case on its padded sampling grid: the canonical k-space operator of the unpadded grid
(operators.FileOrderKSpace), its measurement y (file order), the padding and the slice axis A separates along.
For a few slices it gives the slab's own operator and measurement (`FileOrderKSpace.slab`), the in-plane interior
of a slab (the padding has no measurement), and the estimators of `consistency.py` on them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from diffens_auto.adaptation.consistency import TVState, cg_estimate, measurement_loss, tv_admm_estimate


class KSpaceSlices:
    """A k-space measurement on a padded grid, slab by slab along the slice axis it separates along."""

    block = 1       # a per-slice mask constrains each slice alone

    def __init__(self, operator, measurement: torch.Tensor, pads: Sequence[Sequence[int]], slice_axis: int):
        """Keep the unpadded grid's operator and measurement, the [(before, after)] pads and the slice axis."""
        self.operator, self.measurement = operator, measurement
        self.pads = [tuple(int(v) for v in pad) for pad in pads]
        self.slice_axis = int(slice_axis)

    def region(self, padded_shape: Sequence[int]) -> tuple[int, int]:
        """[start, stop) of the measured slices along the slice axis, in padded-grid indices."""
        before, after = self.pads[self.slice_axis]
        return before, int(padded_shape[self.slice_axis]) - after

    def interior(self, slab: torch.Tensor) -> torch.Tensor:
        """The measured in-plane part of a (B, C, ...) slab whose slice axis holds measured slices only."""
        region = [slice(None)] * 5
        for axis, (before, after) in enumerate(self.pads):
            if axis != self.slice_axis:
                region[2 + axis] = slice(before, slab.shape[2 + axis] - after)
        return slab[tuple(region)]

    def slab(self, indices: torch.Tensor):
        """(operator, measurement) of the padded-grid slices `indices` alone."""
        return self.operator.slab(self.slice_axis, indices - self.pads[self.slice_axis][0], self.measurement)

    def loss(self, x0_slab: torch.Tensor, indices: torch.Tensor, *, gamma: float, cg_steps: int,
             tv: dict | None = None) -> torch.Tensor:
        """The adaptation loss of the prior's x0 on these slices: the misfit of its soft data-consistent estimate
        (CG, or slab TV-ADMM when `tv` holds rho, lam and admm_steps)."""
        operator, y = self.slab(indices)
        x0 = self.interior(x0_slab)
        if tv is None:
            estimate = cg_estimate(operator, x0, y, gamma, cg_steps)
        else:
            estimate, _ = tv_admm_estimate(operator, x0, y, gamma=gamma, cg_steps=cg_steps, dim=2 + self.slice_axis,
                                           **tv)
        return measurement_loss(operator, estimate, y)

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
