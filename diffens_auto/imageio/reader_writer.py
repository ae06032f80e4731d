"""read_image / write_image / read_case: files <-> canonical (X, Y, Z) float32 arrays with props."""
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffens_auto.atomic import atomic_path
from diffens_auto.imageio.errors import ImageReadError, read_error
from diffens_auto.imageio.geometry import (canonical_reorientation, check_same_geometry, make_props, to_canonical,
                                           to_file_order)
from diffens_auto.imageio.nibabel_io import (check_nifti_complete, count_nonfinite_nifti, is_nifti, read_nibabel,
                                             write_nibabel)
from diffens_auto.imageio.simpleitk_io import read_simpleitk, write_simpleitk

IDENTITY_REORIENTATION = {"permutation": [0, 1, 2], "flips": [False, False, False]}


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a 3D image as a float32 (X, Y, Z) array in the closest canonical RAS orientation, with its props."""
    path = Path(path)
    if not path.is_file():
        raise read_error(path, "the file does not exist (or is not a regular file)", "check the path and the file name")
    if is_nifti(path):
        check_nifti_complete(path)
    try:
        array, spacing, origin, direction = read_simpleitk(path)
        io = {"backend": "simpleitk"}
    except RuntimeError as sitk_error:
        array, spacing, origin, direction, io = _read_refused_by_simpleitk(path, sitk_error)
    array, spacing, origin, direction = _as_3d(path, array, spacing, origin, direction)
    reorientation = canonical_reorientation(spacing, direction)
    array, spacing, origin, direction = to_canonical(array.astype(np.float32, copy=False), spacing, origin, direction,
                                                     reorientation)
    return array, make_props(array.shape, spacing, origin, direction, reorientation=reorientation, io=io)


def _read_refused_by_simpleitk(path: Path, sitk_error: RuntimeError):
    """Fall back to nibabel for NIfTI files ITK refuses (e.g. a sheared sform); anything else is an ImageReadError."""
    reason = str(sitk_error).strip().splitlines()[-1].strip()
    if not is_nifti(path):
        raise read_error(path, f"SimpleITK cannot read it ({reason})",
                         "convert it to NIfTI (.nii.gz), e.g. with SimpleITK.WriteImage, or dcm2niix for a DICOM series"
                         ) from sitk_error
    try:
        return read_nibabel(path)
    except ImageReadError:
        raise
    except Exception as nib_error:
        raise read_error(path, f"neither SimpleITK ({reason}) nor nibabel ({type(nib_error).__name__}: {nib_error}) "
                         "can read it", "re-export it as NIfTI with an orthonormal direction (a valid qform/sform)"
                         ) from nib_error


def _as_3d(path: Path, array: np.ndarray, spacing, origin, direction):
    """Drop trailing size-1 dimensions beyond the third (a 4D file with one volume is that volume); reject the rest."""
    if array.ndim > 3 and all(n == 1 for n in array.shape[3:]):
        array = array.reshape(array.shape[:3])
        spacing, origin, direction = spacing[:3], origin[:3], np.asarray(direction)[:3, :3]
    if array.ndim == 3:
        return array, spacing, origin, direction
    if array.ndim < 3:
        raise read_error(path, f"it is a {array.ndim}D image of size {list(array.shape)}; diffens_auto needs 3D images",
                         "save it as a 3D volume (a single slice becomes shape (X, Y, 1))")
    raise read_error(path, f"it is a {array.ndim}D image of size {list(array.shape)}; diffens_auto needs one 3D volume "
                     "per file", "split it into one 3D file per channel or time point "
                     "(CASE_0000.nii.gz, CASE_0001.nii.gz, ...), e.g. with fslsplit or SimpleITK")


def count_nonfinite_voxels(path: str | os.PathLike, array: np.ndarray | None = None) -> int:
    """Count the NaN/inf voxels a file really holds (`array`: the file as read_image gave it, to avoid a re-read)."""
    if is_nifti(path):  # ITK's NIfTI reader turns NaN/inf into 0, so only the file itself can tell
        return count_nonfinite_nifti(path)
    if array is None:
        array, _ = read_image(path)
    return int(np.count_nonzero(~np.isfinite(array)))


def write_image(array: np.ndarray, props: dict, path: str | os.PathLike) -> None:
    """Write a canonical array atomically in the file's original axis order; props' geometry describes `array`."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_image needs a 3D (X, Y, Z) array for '{path}', got shape {list(array.shape)}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype.kind not in "iu":
        array = array.astype(np.float32, copy=False)
    reorientation = props.get("reorientation", IDENTITY_REORIENTATION)
    file_array, spacing, origin, direction = to_file_order(array, props["spacing"], props["origin"],
                                                           props["direction"], reorientation)
    io = props.get("io", {"backend": "simpleitk"})
    with atomic_path(path) as tmp:
        if io.get("backend") == "nibabel" and str(path).lower().endswith((".nii", ".nii.gz")):
            write_nibabel(np.ascontiguousarray(file_array), spacing, origin, direction, io=io, path=tmp)
        else:
            try:
                write_simpleitk(file_array, spacing, origin, direction, tmp)
            except RuntimeError as error:
                reason = str(error).strip().splitlines()[-1].strip()
                raise ValueError(f"Cannot write image '{path}': SimpleITK refused it ({reason}). Fix: use a file "
                                 "ending SimpleITK writes, e.g. .nii.gz, .nii, .mha or .nrrd.") from error


def read_case(files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict]:
    """Read one file per channel as float32 (C, X, Y, Z) with channel 0's props; all channels must share one grid."""
    if len(files) == 0:
        raise ValueError("read_case needs at least one file (one per channel)")
    first_array, first_props = read_image(files[0])
    data = np.empty((len(files),) + first_array.shape, dtype=np.float32)
    data[0] = first_array
    for channel, file in enumerate(files[1:], start=1):
        array, props = read_image(file)
        problems = check_same_geometry(first_props, props)
        if problems:
            raise ImageReadError(
                f"Cannot read case: channel {channel} '{file}' is not on the voxel grid of channel 0 '{files[0]}': "
                f"{'; '.join(problems)}. Fix: resample '{file}' onto the grid of '{files[0]}' (e.g. "
                "SimpleITK.Resample(image, reference_image)) or export both channels from the same registered space.")
        data[channel] = array
    return data, first_props
