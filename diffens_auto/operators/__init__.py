"""Degradation operators: average-pool super-resolution and MRI k-space undersampling (pure tensor code).

    AvgPoolSR(factor)               A, AT(y, hr_shape), pinv(y, hr_shape), project(x0_hat, x) on (..., X, Y, Z)
    avgpool_downsample(volume, f)   the same block means on a numpy array or tensor (preprocessing's convention)
    upsample_to_grid(lowres, f, hr_shape)  trilinear back to the high-resolution grid, voxel i at block i's centre
    KSpaceUndersampling(mask, dims) A, AH, AH_real, pinv, project, cg_data_consistency(x0_hat, y, gamma, num_steps)
    FileOrderKSpace(reorientation, mask, fft_axes)  the same from canonical volumes to a file's own k-space axes;
        kspace_mask, kspace_fft_axes, mask_to_file_order, fft_axes_to_file_order, canonical_to_file_order, ...
    uniform_1d_mask, poisson_disc_mask, achieved_acceleration      centred Cartesian masks (torch.bool)
    conjugate_gradient(apply_matrix, rhs, x0, num_steps, tol)
    degrade_image(array, props, degradation) -> (lowres, lowres_props); lowres_grid, highres_grid, operator_for
See documentation/operators.md for the conventions (partial blocks, FFT centring, complex handling).
"""
from diffens_auto.operators.avgpool import AvgPoolSR, as_factor, avgpool_downsample, lowres_shape, upsample_to_grid
from diffens_auto.operators.conjugate_gradient import conjugate_gradient
from diffens_auto.operators.degrade import (SUPPORTED_DEGRADATIONS, degrade_image, highres_grid, lowres_grid,
                                            operator_for)
from diffens_auto.operators.kspace import KSpaceUndersampling
from diffens_auto.operators.kspace_case import (FileOrderKSpace, canonical_to_file_order, fft_axes_to_file_order,
                                                file_to_canonical_order, kspace_fft_axes, kspace_mask,
                                                mask_to_file_order)
from diffens_auto.operators.masks import achieved_acceleration, poisson_disc_mask, uniform_1d_mask

__all__ = ["AvgPoolSR", "KSpaceUndersampling", "SUPPORTED_DEGRADATIONS", "achieved_acceleration", "as_factor",
           "avgpool_downsample", "conjugate_gradient", "degrade_image", "highres_grid", "lowres_grid", "lowres_shape",
           "operator_for", "poisson_disc_mask", "uniform_1d_mask", "upsample_to_grid",
           "FileOrderKSpace", "canonical_to_file_order", "fft_axes_to_file_order", "file_to_canonical_order",
           "kspace_fft_axes", "kspace_mask", "mask_to_file_order"]
