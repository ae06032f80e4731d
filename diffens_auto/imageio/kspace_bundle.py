"""Measurement bundles CASE.npz: one case's undersampled single-coil k-space, read, validated and written atomically.

A bundle holds exactly five arrays (np.savez, no pickled objects):
    kspace     complex (stored complex64), 3 axes in the file's own array order: the measured k-space
    mask       bool, 3 axes, each the k-space's size or 1 (one mask repeated over slices): the sampled points
    affine     4x4 voxel-to-world of the image's voxel grid, NIfTI's RAS+ convention (as nibabel's `img.affine`)
    fft_axes   ints among 0, 1, 2, distinct: the file axes the (centred, orthonormal) FFT runs over
    noise_std  float scalar >= 0: the standard deviation of the measurement noise
Every problem is a MeasurementBundleError naming the file, the key and the fix.

`bundle_geometry(affine, shape)` gives the canonical props read_image would give for a NIfTI of that affine and
shape, so an image written with write_image on them lands on the bundle's grid in the file's axis order.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.orientations import inv_ornt_aff

from diffens_auto.atomic import atomic_path
from diffens_auto.imageio.errors import ImageReadError
from diffens_auto.imageio.geometry import LPS_TO_RAS, canonical_reorientation, make_props

BUNDLE_KEYS = ("kspace", "mask", "affine", "fft_axes", "noise_std")
_SAVE_HINT = ("np.savez('CASE.npz', kspace=k.astype(np.complex64), mask=m.astype(bool), affine=img.affine, "
              "fft_axes=np.array([0, 1]), noise_std=0.0)")
_LOAD_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


class MeasurementBundleError(ImageReadError):
    """A measurement bundle cannot be read or written; the message names the file, the key and the fix."""


class _Malformed(Exception):
    """One problem of one key, turned into a MeasurementBundleError once the file's name is known."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(key, problem, fix)
        self.key, self.problem, self.fix = key, problem, fix


def _bundle_error(path, verb: str, malformed: _Malformed) -> MeasurementBundleError:
    where = (f"{'keys' if ',' in malformed.key else 'key'} '{malformed.key}'" if malformed.key else "the file")
    return MeasurementBundleError(f"Cannot {verb} measurement bundle '{path}': {where}: {malformed.problem}. "
                                  f"Fix: {malformed.fix}.")


@dataclass(frozen=True, eq=False)
class KSpaceBundle:
    """One case's measurement in the file's own array axes (see the module for each field)."""

    kspace: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    fft_axes: tuple[int, ...]
    noise_std: float

    @property
    def props(self) -> dict:
        """Canonical geometry of the bundle's image grid, as read_image gives it for a NIfTI with this affine."""
        return bundle_geometry(self.affine, self.kspace.shape)

    @property
    def reorientation(self) -> dict:
        """Permutation and flips from the file's axes to the canonical ones (imageio's convention)."""
        return self.props["reorientation"]


def _file_geometry(affine: np.ndarray):
    """Spacing, LPS origin and LPS direction of a file-ordered grid, as the nibabel reader derives them."""
    spacing = voxel_sizes(affine)
    return spacing, LPS_TO_RAS @ affine[:3, 3], LPS_TO_RAS @ affine[:3, :3] / spacing


def _io_of(direction: np.ndarray) -> dict:
    """The backend read_image reports: SimpleITK for orthonormal directions, nibabel (sform only) for sheared ones."""
    if np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        return {"backend": "simpleitk"}
    return {"backend": "nibabel", "qform_code": 0, "sform_code": 2}


def bundle_geometry(affine, shape) -> dict:
    """Canonical props (LPS spacing, origin, direction, shape, reorientation, io) of a file grid with this affine."""
    affine = np.asarray(affine, float)
    spacing, _, direction = _file_geometry(affine)
    reorientation = canonical_reorientation(spacing, direction)
    permutation, flips = reorientation["permutation"], reorientation["flips"]
    # nibabel's orientation: file axis p_j goes to canonical axis j, reversed when flipped
    ornt = np.zeros((3, 2))
    for j, file_axis in enumerate(permutation):
        ornt[file_axis] = (j, -1 if flips[j] else 1)
    canonical_affine = affine @ inv_ornt_aff(ornt, tuple(int(n) for n in shape))
    canonical_spacing, origin, canonical_direction = _file_geometry(canonical_affine)
    canonical_shape = [int(shape[p]) for p in permutation]
    return make_props(canonical_shape, canonical_spacing, origin, canonical_direction, reorientation=reorientation,
                      io=_io_of(direction))


def _check_keys(names) -> None:
    missing = [key for key in BUNDLE_KEYS if key not in names]
    if missing:
        raise _Malformed(", ".join(missing), "missing (a bundle needs kspace, mask, affine, fft_axes and noise_std)",
                         f"write all five arrays, e.g. {_SAVE_HINT}")
    unknown = sorted(set(names) - set(BUNDLE_KEYS))
    if unknown:
        raise _Malformed(", ".join(unknown), "not a bundle key (bundles are single-coil: coil sensitivities and "
                         "other extra arrays are not read)", f"remove it; a bundle holds exactly {list(BUNDLE_KEYS)}")


def _check_kspace(kspace: np.ndarray) -> np.ndarray:
    if kspace.dtype.kind != "c":
        raise _Malformed("kspace", f"its dtype is {kspace.dtype}, not complex",
                         "store the complex k-space itself, kspace=k.astype(np.complex64)")
    if kspace.ndim != 3 or kspace.size == 0:
        raise _Malformed("kspace", f"its shape is {list(kspace.shape)}; a bundle holds one single-coil 3D k-space "
                         "(multi-coil data is out of scope)", "store a non-empty 3-axis array in the file's axis "
                         "order (combine coils beforehand)")
    kspace = kspace.astype(np.complex64, copy=False)
    if not np.isfinite(kspace).all():
        raise _Malformed("kspace", f"{int(np.count_nonzero(~np.isfinite(kspace)))} values are NaN or infinite",
                         "store 0 at points that were not measured and mark them False in the mask")
    return kspace


def _check_mask(mask: np.ndarray, shape) -> np.ndarray:
    if mask.dtype != bool:
        raise _Malformed("mask", f"its dtype is {mask.dtype}, not bool", "store mask=m.astype(bool) (True = sampled)")
    if mask.ndim != 3 or any(m not in (1, n) for m, n in zip(mask.shape, shape)):
        raise _Malformed("mask", f"its shape {list(mask.shape)} does not broadcast per axis to the k-space's "
                         f"{list(shape)}", "give it 3 axes, each the k-space's size or 1 where one mask repeats "
                         "(e.g. shape (nx, ny, 1) for the same mask on every slice along axis 2)")
    if not mask.any():
        raise _Malformed("mask", "it samples no point (all False)", "mark the measured k-space points True")
    return mask


def _check_affine(affine: np.ndarray) -> np.ndarray:
    if affine.shape != (4, 4) or affine.dtype.kind not in "fiu":
        raise _Malformed("affine", f"it is a {affine.dtype} array of shape {list(affine.shape)}, not a real 4x4 matrix",
                         "store the image's 4x4 voxel-to-world matrix, affine=nibabel.load(scan).affine")
    affine = affine.astype(float)
    if not np.isfinite(affine).all() or not np.array_equal(affine[3], [0, 0, 0, 1]):
        raise _Malformed("affine", f"it is not a finite affine matrix with last row [0, 0, 0, 1]:\n{affine}",
                         "store the image's voxel-to-world matrix, affine=nibabel.load(scan).affine")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0) or abs(np.linalg.det(affine[:3, :3] / np.where(spacing == 0, 1, spacing))) < 1e-6:
        raise _Malformed("affine", f"its 3x3 part is singular (a zero voxel size or dependent axes):\n{affine}",
                         "store the image's voxel-to-world matrix, with non-zero voxel sizes and independent axes")
    return affine


def _check_fft_axes(fft_axes: np.ndarray) -> tuple[int, ...]:
    axes = fft_axes.reshape(-1)
    if fft_axes.ndim > 1 or fft_axes.dtype.kind not in "iu" or axes.size == 0:
        raise _Malformed("fft_axes", f"it is a {fft_axes.dtype} array of shape {list(fft_axes.shape)}, not a list of "
                         "axis numbers", "store the file axes the FFT runs over, e.g. fft_axes=np.array([0, 1])")
    if not all(0 <= a <= 2 for a in axes) or len(set(axes.tolist())) != axes.size:
        raise _Malformed("fft_axes", f"{axes.tolist()} are not distinct axes among 0, 1, 2",
                         "list each transformed file axis once, e.g. [0, 1] for 2D slices along axis 2")
    return tuple(sorted(int(a) for a in axes))


def _check_noise_std(noise_std: np.ndarray) -> float:
    if noise_std.shape != () or noise_std.dtype.kind not in "fiu":
        raise _Malformed("noise_std", f"it is a {noise_std.dtype} array of shape {list(noise_std.shape)}, not a "
                         "real scalar", "store one number, e.g. noise_std=0.0")
    value = float(noise_std)
    if not np.isfinite(value) or value < 0:
        raise _Malformed("noise_std", f"it is {value}; a standard deviation is a finite number >= 0",
                         "store the measurement noise's standard deviation (0.0 for noiseless data)")
    return value


def _checked(arrays: dict) -> KSpaceBundle:
    """The validated bundle of five raw arrays (raises _Malformed at the first problem)."""
    _check_keys(arrays)
    kspace = _check_kspace(arrays["kspace"])
    return KSpaceBundle(kspace=kspace, mask=_check_mask(arrays["mask"], kspace.shape),
                        affine=_check_affine(arrays["affine"]), fft_axes=_check_fft_axes(arrays["fft_axes"]),
                        noise_std=_check_noise_std(arrays["noise_std"]))


def _load_arrays(path: Path) -> dict:
    """Every array of an .npz archive, refusing pickled objects, single .npy files and damaged archives."""
    try:
        archive = np.load(path, allow_pickle=False)
    except _LOAD_ERRORS as error:
        raise _Malformed("", f"it is not a readable NumPy .npz archive ({type(error).__name__}: {error})",
                         f"write it with {_SAVE_HINT}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _Malformed("", "it holds a single .npy array, not an .npz archive of named arrays",
                         f"write it with {_SAVE_HINT}")
    with archive:
        _check_keys(archive.files)
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except _LOAD_ERRORS as error:
                raise _Malformed(key, f"it cannot be loaded without unpickling or is damaged ({error})",
                                 "store plain numeric arrays (no Python objects, lists or None), written again "
                                 "with np.savez") from error
    return arrays


def read_kspace_bundle(path: str | os.PathLike) -> KSpaceBundle:
    """Read and validate a measurement bundle CASE.npz (k-space as complex64, file axes)."""
    path = Path(path)
    if not path.is_file():
        raise _bundle_error(path, "read", _Malformed("", "the file does not exist (or is not a regular file)",
                                                     "check the path and the file name"))
    try:
        return _checked(_load_arrays(path))
    except _Malformed as malformed:
        raise _bundle_error(path, "read", malformed) from None


def write_kspace_bundle(bundle: KSpaceBundle, path: str | os.PathLike) -> None:
    """Validate and write a bundle atomically (k-space as complex64), so that read_kspace_bundle accepts it."""
    arrays = {"kspace": np.asarray(bundle.kspace), "mask": np.asarray(bundle.mask),
              "affine": np.asarray(bundle.affine), "fft_axes": np.asarray(bundle.fft_axes),
              "noise_std": np.asarray(bundle.noise_std)}
    try:
        checked = _checked(arrays)
    except _Malformed as malformed:
        raise _bundle_error(path, "write", malformed) from None
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            np.savez(stream, kspace=checked.kspace, mask=checked.mask, affine=checked.affine,
                     fft_axes=np.asarray(checked.fft_axes, dtype=np.int64),
                     noise_std=np.float64(checked.noise_std))
