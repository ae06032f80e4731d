"""Which slices an adaptation step trains on: K distinct ones, a contiguous slab, or whole blocks of them.

The slices are drawn along the axis the operator separates along (a per-slice k-space mask's slice axis; any axis
of average pooling, whose blocks stay whole), inside the measured region [start, stop) of the sampling grid (the
padding has no measurement). Every draw comes from the adaptation's own seeded generator, never the sampler's, so
DDS and D3IP see the same sampler noise (D3IP.md pitfall 5).
"""
from __future__ import annotations

import torch

from diffens_auto.errors import DiffensError


class NothingToAdaptError(DiffensError, ValueError):
    """A case too small along an expert's axis to draw one slice (or one whole block) from."""


def draw_slices(start: int, stop: int, count: int, generator: torch.Generator, *, contiguous: bool = False,
                block: int = 1) -> torch.Tensor:
    """Sorted indices of `count` slices (or, with block > 1, `count` whole blocks of `block` slices) in
    [start, stop): distinct random ones, or one contiguous run at a random place."""
    if block < 1 or (stop - start) % block:
        raise ValueError(f"The region [{start}, {stop}) does not hold whole blocks of {block} slices.")
    units = (stop - start) // block
    if units < 1:
        raise NothingToAdaptError(f"The measured region [{start}, {stop}) along the expert's axis holds no "
                                  f"{'whole block of ' + str(block) + ' slices' if block > 1 else 'slice'} to "
                                  "adapt on. Fix: predict this case without --adapt.")
    count = min(int(count), units)
    if contiguous:
        first = int(torch.randint(units - count + 1, (1,), generator=generator))
        picked = torch.arange(first, first + count)
    else:
        picked = torch.randperm(units, generator=generator)[:count].sort().values
    offsets = torch.arange(block)
    return (start + (picked[:, None] * block + offsets[None, :])).flatten()
