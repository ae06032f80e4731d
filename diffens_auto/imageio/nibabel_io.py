"""nibabel backend for NIfTI files ITK refuses (non-orthonormal sform), and the NIfTI completeness check.

Geometry is converted to the same LPS convention SimpleITK uses: spacing = affine column norms,
direction = unit columns (kept non-orthogonal when the affine is sheared, so writing reproduces it).
"""
import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from diffens_auto.imageio.errors import read_error
from diffens_auto.imageio.geometry import LPS_TO_RAS

NIFTI_ENDINGS = (".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz")
_TRUNCATED_FIX = "copy or download the file again (an interrupted transfer), or re-export it"


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether the path's ending is a NIfTI/ANALYZE one."""
    return str(path).lower().endswith(NIFTI_ENDINGS)


def read_nibabel(path: str | os.PathLike):
    """Read a NIfTI as (array in file index order, spacing, origin, direction, io dict with qform/sform codes)."""
    image = nib.load(str(path))
    affine = np.asarray(image.affine, float)
    columns = LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing == 0) or abs(np.linalg.det(columns / np.where(spacing == 0, 1, spacing))) < 1e-6:
        raise read_error(path, f"its voxel-to-world affine is degenerate:\n{affine}",
                         "re-export it with a valid sform/qform (non-zero voxel sizes, independent axes)")
    header = image.header
    io = {"backend": "nibabel", "qform_code": int(header["qform_code"]), "sform_code": int(header["sform_code"])}
    array = np.asanyarray(image.dataobj).astype(np.float32, copy=False)
    return array, spacing, LPS_TO_RAS @ affine[:3, 3], columns / spacing, io


def write_nibabel(file_array: np.ndarray, spacing, origin, direction, *, io: dict,
                  path: str | os.PathLike) -> None:
    """Write a file-ordered array as NIfTI with the qform/sform codes in `io` (the qform drops any shear)."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ np.asarray(direction, float) @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin, float)
    image = nib.Nifti1Image(file_array, affine, dtype=file_array.dtype)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=int(io.get("sform_code", 2)))
    image.set_qform(affine, code=int(io.get("qform_code", 0)))
    nib.save(image, str(path))


def check_nifti_complete(path: str | os.PathLike) -> None:
    """Raise ImageReadError if a NIfTI file holds fewer bytes than its header promises (ITK would read zeros)."""
    try:
        proxy = nib.load(str(path)).dataobj
        data_file = Path(proxy.file_like)
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * np.dtype(proxy.dtype).itemsize
    except Exception as error:
        raise read_error(path, f"it is damaged or not a NIfTI file: its header cannot be parsed "
                         f"({type(error).__name__}: {error})",
                         "copy or download it again, or re-export it as NIfTI (.nii.gz)") from error
    if data_file.name.lower().endswith(".gz"):
        if not _gzip_holds(data_file, expected):
            raise read_error(path, f"it is truncated: its header promises {expected} bytes of header and voxels, "
                             "the gzip stream breaks off before that", _TRUNCATED_FIX)
    elif data_file.stat().st_size < expected:
        raise read_error(path, f"it is truncated: its header promises {expected} bytes of header and voxels, "
                         f"the file holds {data_file.stat().st_size}", _TRUNCATED_FIX)


def _gzip_holds(path: Path, expected: int) -> bool:
    """Whether a gzip file decompresses completely to at least `expected` bytes."""
    with open(path, "rb") as stream:
        stream.seek(0, os.SEEK_END)
        if stream.tell() >= 18:
            stream.seek(-4, os.SEEK_END)
            # A complete single-member gzip ends with the uncompressed size mod 2**32; checking it avoids
            # decompressing the whole file twice. Anything else (truncated, multi-member) is measured.
            if int.from_bytes(stream.read(4), "little") == expected % 2**32:
                return True
    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
    except (EOFError, OSError, zlib.error):
        return False
    return size >= expected


def count_nonfinite_nifti(path: str | os.PathLike) -> int:
    """Count NaN/inf voxels of a NIfTI file as stored (ITK's NIfTI reader silently turns them into 0)."""
    proxy = nib.load(str(path)).dataobj
    if np.dtype(proxy.dtype).kind not in "fc":
        return 0
    return int(np.count_nonzero(~np.isfinite(np.asanyarray(proxy))))
