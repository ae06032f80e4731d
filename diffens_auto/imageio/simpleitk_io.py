"""SimpleITK backend: every format ITK reads, geometry exactly as ITK reports it (LPS)."""
import os

import numpy as np
import SimpleITK as sitk

from diffens_auto.imageio.errors import read_error


def read_simpleitk(path: str | os.PathLike):
    """Read (array in file index order (i, j, k, ...), spacing, origin, direction); sitk raises RuntimeError."""
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise read_error(path, f"it has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         f"(pixel type {image.GetPixelIDTypeAsString()}), diffens_auto needs one scalar per voxel",
                         "save each component as its own 3D channel file (CASE_0000.nii.gz, CASE_0001.nii.gz, ...)")
    array = sitk.GetArrayFromImage(image)
    if np.iscomplexobj(array):
        raise read_error(path, f"its voxels are complex ({image.GetPixelIDTypeAsString()})",
                         "save the magnitude image (e.g. numpy.abs) as a real-valued 3D file")
    dimension = image.GetDimension()
    # GetArrayFromImage returns (..., z, y, x); reverse to the file's index order (i, j, k, ...).
    array = np.transpose(array, tuple(reversed(range(array.ndim))))
    direction = np.asarray(image.GetDirection(), float).reshape(dimension, dimension)
    return array, np.asarray(image.GetSpacing(), float), np.asarray(image.GetOrigin(), float), direction


def write_simpleitk(file_array: np.ndarray, spacing, origin, direction, path: str | os.PathLike) -> None:
    """Write a file-ordered (i, j, k) array with its LPS geometry; the format follows the path's ending."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(file_array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(v) for v in np.asarray(direction, float).ravel()])
    sitk.WriteImage(image, str(path), useCompression=True)
