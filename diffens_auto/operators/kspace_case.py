"""One case's k-space operator: canonical images in, the file's own undersampled k-space out.

    FileOrderKSpace(reorientation, mask, fft_axes)   A = M F P on canonical (..., X, Y, Z) volumes, with
        AH, AH_real, pinv (zero-filled), project, cg_data_consistency(x0_hat, y, gamma, num_steps)
    kspace_mask(degradation, shape, seed=...)        the canonical mask of a {"type": "kspace", ...} degradation
    kspace_fft_axes(degradation)                     its canonical FFT axes (the in-plane axes of each slice)
    mask_to_file_order, fft_axes_to_file_order       a canonical mask and FFT axes in the file's array axes
    canonical_to_file_order, file_to_canonical_order the reorientation on tensors (imageio's convention)

The composition. A measurement lives in the file's own array axes; the priors see canonical volumes. With imageio's
reorientation {permutation p, flips f} (canonical axis j = file axis p_j, reversed when f_j), P takes a canonical
volume to the file's order (reverse the flipped axes, then the inverse permutation), F is KSpaceUndersampling's
centred orthonormal FFT over the file's `fft_axes` and M the file-order mask. P only moves voxels, so it is unitary
(Pᴴ = P⁻¹) and everything is exact: Aᴴ = Pᴴ Fᴴ M, A⁺ = Pᴴ (M F)⁺, and the DDS system (γ AᴴA + I) x = γ Aᴴy + x̂0 is
the file-order system conjugated by P, so CG (which sees only inner products) takes the same steps. The measured
k-space is never resampled, flipped or reordered.

Canonical masks. A mask drawn in canonical axes is carried to the file's axes exactly: reversing an image axis of
length n reverses its centred spectrum about the DC index c = n // 2 (k -> (2c - k) mod n) and multiplies it by a
phase, so along a flipped FFT axis the mask is reflected about c (along a flipped slice axis, where no FFT runs, the
slices are simply reversed), then permuted. The file-order operator then has the same AᴴA as the canonical one:
the same reconstruction problem, written in the file's axes.

Normalisation ("unit", the default). The mask's weights are divided by their maximum, and F is unitary, so
‖A‖₂ = 1 and, for a 0/1 mask, AᴴA is the orthogonal projection onto the sampled frequencies. The DDS solution
(D3IP Eq. 27-28) then acts per frequency: a sampled coefficient becomes (γ y + k̂0) / (γ + 1) and an unsampled one
keeps k̂0. γ is thus the data-to-prior weight of each measured coefficient, independent of the mask, the
acceleration, the grid size and whether the FFT is 2D or 3D (DDS's orthonormal fft2c gives the same; a "backward"
FFT would multiply γ by the number of points, and scaling A by sqrt(acceleration) would make it γ · R). Real
images: Re(AᴴA) gives a frequency whose mirror -k is not sampled half the weight (a real image's spectrum is
Hermitian), which the normalisation cannot and should not change. "none" keeps the mask's weights as given.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import numpy as np
import torch

from diffens_auto.operators.kspace import KSpaceUndersampling
from diffens_auto.operators.masks import poisson_disc_mask, uniform_1d_mask

KSPACE_MASK_KINDS = ("poisson", "uniform1d")
KSPACE_MASK_DEFAULTS = {"acs": 12, "slice_axis": 2, "mask_per_slice": False}
NORMALISATIONS = ("unit", "none")


def _reorientation(reorientation: Mapping) -> tuple[list[int], list[bool]]:
    """The checked (permutation, flips) of an imageio reorientation dict."""
    permutation = [int(p) for p in reorientation["permutation"]]
    flips = [bool(f) for f in reorientation["flips"]]
    if sorted(permutation) != [0, 1, 2] or len(flips) != 3:
        raise ValueError(f"reorientation needs a permutation of (0, 1, 2) and 3 flips, got {dict(reorientation)}.")
    return permutation, flips


def _spatial_dims(x: torch.Tensor, axes) -> list[int]:
    """Tensor dims of spatial axes 0..2 (the last three dims)."""
    return [x.dim() - 3 + int(a) for a in axes]


def canonical_to_file_order(x: torch.Tensor, reorientation: Mapping) -> torch.Tensor:
    """Canonical (..., X, Y, Z) tensor in the file's array order (imageio's `to_file_order` on the last three dims)."""
    permutation, flips = _reorientation(reorientation)
    flipped = _spatial_dims(x, [j for j in range(3) if flips[j]])
    x = torch.flip(x, flipped) if flipped else x
    return x.permute(*range(x.dim() - 3), *_spatial_dims(x, np.argsort(permutation)))


def file_to_canonical_order(x: torch.Tensor, reorientation: Mapping) -> torch.Tensor:
    """File-ordered (..., i, j, k) tensor in canonical order (imageio's `to_canonical` on the last three dims)."""
    permutation, flips = _reorientation(reorientation)
    x = x.permute(*range(x.dim() - 3), *_spatial_dims(x, permutation))
    flipped = _spatial_dims(x, [j for j in range(3) if flips[j]])
    return torch.flip(x, flipped) if flipped else x


def _checked_axes(fft_axes: Sequence[int]) -> tuple[int, ...]:
    axes = tuple(int(a) for a in fft_axes)
    if not axes or len(set(axes)) != len(axes) or not all(0 <= a <= 2 for a in axes):
        raise ValueError(f"fft_axes must be distinct spatial axes among 0, 1, 2, got {list(fft_axes)}.")
    return tuple(sorted(axes))


def fft_axes_to_file_order(fft_axes: Sequence[int], reorientation: Mapping) -> tuple[int, ...]:
    """The file axes of canonical FFT axes (canonical axis j is file axis permutation[j])."""
    permutation, _ = _reorientation(reorientation)
    return tuple(sorted(permutation[a] for a in _checked_axes(fft_axes)))


def mask_to_file_order(mask, reorientation: Mapping, fft_axes: Sequence[int]) -> torch.Tensor:
    """A canonical 3-axis mask in the file's axes, reflected about DC on flipped FFT axes (same AᴴA, see above)."""
    mask = torch.as_tensor(mask)
    if mask.dim() != 3:
        raise ValueError(f"mask_to_file_order needs a mask with 3 axes (size 1 where it repeats), got {mask.dim()}.")
    permutation, flips = _reorientation(reorientation)
    fft_axes = _checked_axes(fft_axes)
    for axis in (j for j in range(3) if flips[j]):
        n = mask.shape[axis]
        mask = torch.flip(mask, [axis])
        if axis in fft_axes and n % 2 == 0:
            # k -> (2c - k) mod n with c = n // 2: for even n the plain reversal k -> n - 1 - k, shifted by one
            mask = torch.roll(mask, 1, dims=axis)
    return mask.permute(*[int(i) for i in np.argsort(permutation)])


def _normalised(mask: torch.Tensor, normalisation: str) -> torch.Tensor:
    """The mask with its largest weight 1 ("unit") or as given ("none"); refuses complex, negative and empty masks."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {list(NORMALISATIONS)}, got {normalisation!r}.")
    if mask.is_complex() or (mask.dtype != torch.bool and bool((mask < 0).any())):
        raise ValueError("the k-space mask must be bool or real non-negative weights.")
    largest = mask.max()
    if not bool(largest > 0):
        raise ValueError("the k-space mask samples no point: it needs at least one non-zero entry.")
    if normalisation == "none" or mask.dtype == torch.bool or bool(largest == 1):
        return mask
    return mask / largest


class FileOrderKSpace:
    """y = M F P x: canonical volumes to the file's undersampled k-space (unitary reorientation P, see the module)."""

    def __init__(self, reorientation: Mapping, mask, fft_axes: Sequence[int], *, normalisation: str = "unit"):
        """Keep the reorientation, the file-order mask (3 axes, each the file's size or 1) and the file FFT axes."""
        permutation, flips = _reorientation(reorientation)
        self.reorientation = {"permutation": permutation, "flips": flips}
        self.fft_axes = _checked_axes(fft_axes)
        mask = torch.as_tensor(mask)
        if mask.dim() != 3:
            raise ValueError(f"FileOrderKSpace needs a mask with 3 axes in file order (size 1 where it repeats), "
                             f"got shape {list(mask.shape)}.")
        self.normalisation = normalisation
        self.kspace = KSpaceUndersampling(_normalised(mask, normalisation), dims=tuple(a - 3 for a in self.fft_axes))

    @classmethod
    def from_canonical_mask(cls, reorientation: Mapping, mask, fft_axes: Sequence[int], *,
                            normalisation: str = "unit") -> "FileOrderKSpace":
        """The operator of a mask and FFT axes given in canonical axes (e.g. by `kspace_mask`)."""
        return cls(reorientation, mask_to_file_order(mask, reorientation, fft_axes),
                   fft_axes_to_file_order(fft_axes, reorientation), normalisation=normalisation)

    @property
    def mask(self) -> torch.Tensor:
        """The (normalised) mask in the file's array axes."""
        return self.kspace.mask

    def __repr__(self) -> str:
        return (f"FileOrderKSpace(reorientation={self.reorientation}, mask {tuple(self.mask.shape)}, "
                f"fft_axes={self.fft_axes}, normalisation={self.normalisation!r})")

    def to_file_order(self, x: torch.Tensor) -> torch.Tensor:
        """P: a canonical volume in the file's array order."""
        return canonical_to_file_order(x, self.reorientation)

    def to_canonical(self, x: torch.Tensor) -> torch.Tensor:
        """Pᴴ = P⁻¹: a file-ordered volume in canonical order."""
        return file_to_canonical_order(x, self.reorientation)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """File-order undersampled k-space M F P x of a canonical volume (complex)."""
        return self.kspace.A(self.to_file_order(x))

    def AH(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint Pᴴ Fᴴ M y: a canonical complex image."""
        return self.to_canonical(self.kspace.AH(y))

    def AH_real(self, y: torch.Tensor) -> torch.Tensor:
        """Re(Aᴴ y): the adjoint of A restricted to real canonical images."""
        return self.AH(y).real

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺ y = Pᴴ (M F)⁺ y: the zero-filled reconstruction for a 0/1 mask, canonical and complex."""
        return self.to_canonical(self.kspace.pinv(y))

    def project(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hard data consistency x̂0 − A⁺(A x̂0 − y) (complex, canonical)."""
        return x0_hat - self.pinv(self.A(x0_hat) - y)

    def slab(self, slice_axis: int, indices, y: torch.Tensor) -> tuple["FileOrderKSpace", torch.Tensor]:
        """(the operator of the canonical slices `indices` along `slice_axis` alone, their part of y).

        The slice axis must be one no FFT runs along, so that A acts on each slice by itself; indices are sorted
        canonical slice numbers of the full grid. y is the full measurement (..., file axes).
        """
        permutation, flips = self.reorientation["permutation"], self.reorientation["flips"]
        axis = permutation[int(slice_axis)]
        if axis in self.fft_axes:
            raise ValueError(f"Canonical axis {slice_axis} is file axis {axis}, an FFT axis of this operator: A does "
                             "not act on its slices one by one.")
        count = y.shape[y.dim() - 3 + axis]
        indices = torch.as_tensor(indices, dtype=torch.long)
        # a flipped axis reverses the slab: canonical slice i is file slice count - 1 - i
        chosen = (count - 1 - indices).flip(0) if flips[int(slice_axis)] else indices
        mask = self.mask
        if mask.shape[axis] != 1:
            mask = mask.index_select(axis, chosen.to(mask.device))
        operator = FileOrderKSpace(self.reorientation, mask, self.fft_axes, normalisation="none")
        return operator, y.index_select(y.dim() - 3 + axis, chosen.to(y.device))

    def cg_data_consistency(self, x0_hat: torch.Tensor, y: torch.Tensor, gamma: float = 5.0,
                            num_steps: int = 5) -> torch.Tensor:
        """DDS step: num_steps CG steps on (γAᴴA + I) x = γAᴴy + x̂0 from x̂0, canonical in and out."""
        # D3IP Eq. 27-28, solved in the file's order: conjugating by the unitary P changes no CG step.
        refined = self.kspace.cg_data_consistency(self.to_file_order(x0_hat), y, gamma=gamma, num_steps=num_steps)
        return self.to_canonical(refined)


def _kspace_fields(degradation) -> dict:
    """The degradation as a dict with defaults filled in; refuses what the mask builder cannot draw."""
    fields = dict(degradation if isinstance(degradation, Mapping) else degradation.to_dict())
    fields = {**KSPACE_MASK_DEFAULTS, **fields}
    if fields.get("type") != "kspace" or fields.get("mask") not in KSPACE_MASK_KINDS:
        raise ValueError(f"kspace_mask needs a {{'type': 'kspace', 'mask': one of {list(KSPACE_MASK_KINDS)}, ...}} "
                         f"degradation, got {dict(fields)}.")
    acceleration = fields.get("acceleration")
    if int(fields["slice_axis"]) not in (0, 1, 2) or not isinstance(acceleration, (int, float)) or acceleration < 1:
        raise ValueError(f"kspace_mask needs slice_axis in 0, 1, 2 and acceleration >= 1, got {dict(fields)}.")
    return fields


def kspace_fft_axes(degradation) -> tuple[int, int]:
    """Canonical FFT axes of a k-space degradation: the two axes in the plane of each slice."""
    slice_axis = int(_kspace_fields(degradation)["slice_axis"])
    return tuple(a for a in range(3) if a != slice_axis)


def _slice_seed(seed: int, index: int) -> int:
    """An independent, reproducible seed for slice `index` (numpy's SeedSequence spawning)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _plane_mask(fields: Mapping, plane_shape: tuple[int, int], seed: int) -> torch.Tensor:
    """One slice's 2D mask: Poisson disc, or whole lines along the plane's second axis with ACS lines."""
    acceleration, acs = float(fields["acceleration"]), int(fields["acs"])
    if fields["mask"] == "poisson":
        return poisson_disc_mask(plane_shape, acceleration, acs=acs, seed=seed)
    return uniform_1d_mask(plane_shape, acceleration, acs, axis=1, seed=seed)


def kspace_mask(degradation, shape: Sequence[int], *, seed: int = 0) -> torch.Tensor:
    """Canonical bool mask of a k-space degradation on a volume of `shape` (size 1 along slice_axis unless per slice).

    Every slice perpendicular to `slice_axis` is undersampled in its plane: Poisson disc with an acs × acs box, or
    uniform 1D lines along the later in-plane axis (Y for axial slices) with `acs` centre lines, the other in-plane
    axis read out fully. One mask for all slices from `seed`, or with `mask_per_slice` one per slice, each from its
    own seed derived from (seed, slice index).
    """
    fields = _kspace_fields(degradation)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"kspace_mask needs a 3D canonical shape (X, Y, Z), got {list(shape)}.")
    slice_axis = int(fields["slice_axis"])
    plane_shape = tuple(shape[a] for a in range(3) if a != slice_axis)
    if not fields["mask_per_slice"]:
        return _plane_mask(fields, plane_shape, int(seed)).unsqueeze(slice_axis)
    planes = [_plane_mask(fields, plane_shape, _slice_seed(seed, s)) for s in range(shape[slice_axis])]
    return torch.stack(planes, dim=slice_axis)
