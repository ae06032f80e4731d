"""Image I/O: 3D files <-> float32 (X, Y, Z) arrays in the closest canonical RAS orientation, with full geometry.

`props` describes the canonical array (all plain JSON types):
    {"spacing": [sx, sy, sz],            # mm, canonical axis order
     "origin": [ox, oy, oz],             # ITK/LPS world position (mm) of canonical voxel (0, 0, 0)
     "direction": [[..], [..], [..]],    # 3x3, column j = LPS world unit vector of canonical axis j
     "shape": [nx, ny, nz],
     "reorientation": {"permutation": [p0, p1, p2],    # canonical axis j = file axis p_j
                       "flips": [f0, f1, f2]},         # bools: canonical axis j runs against file axis p_j
     "io": {"backend": "simpleitk"} or {"backend": "nibabel", "qform_code": q, "sform_code": s}}
Physical position of canonical index i: origin + direction @ (spacing * i).
Measurement bundles CASE.npz (k-space, mask, affine, fft_axes, noise_std): read_kspace_bundle, write_kspace_bundle,
KSpaceBundle (.props: bundle_geometry of its affine), MeasurementBundleError.
"""
from diffens_auto.imageio.errors import ImageReadError
from diffens_auto.imageio.geometry import check_same_geometry, crop_geometry, index_to_world, with_spacing
from diffens_auto.imageio.kspace_bundle import (KSpaceBundle, MeasurementBundleError, bundle_geometry,
                                               read_kspace_bundle, write_kspace_bundle)
from diffens_auto.imageio.reader_writer import count_nonfinite_voxels, read_case, read_image, write_image

__all__ = ["ImageReadError", "check_same_geometry", "count_nonfinite_voxels", "crop_geometry", "index_to_world", "read_case", "read_image",
           "with_spacing", "write_image",
           "KSpaceBundle", "MeasurementBundleError", "bundle_geometry", "read_kspace_bundle", "write_kspace_bundle"]
