"""Map a channel from the preprocessed grid back onto the original image: the inverse of preprocess_case."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import numpy as np

from diffens_auto.imageio import write_image
from diffens_auto.preprocessing.cropping import paste_into_bbox
from diffens_auto.preprocessing.normalization import denormalize, select_params
from diffens_auto.preprocessing.resampling import extend_foreground, foreground_at_spacing, resample_data


def invert_preprocessing(channel_data: np.ndarray, properties: Mapping, channel: int, normalization="case", *,
                         mask_original: np.ndarray) -> tuple[np.ndarray, dict]:
    """Return (float32 array on the original canonical grid, imageio props to write it with).

    `channel_data` (X', Y', Z') is normalised at the target spacing; `normalization` names the parameters to undo
    ("case", "dataset", "degraded:avgpool_4x4x4") or gives them ({"center", "half_range"}). The array is
    denormalised, resampled back to the crop's shape (same separate-z choice as forward), pasted into the full
    image at the bbox, and every voxel outside the original foreground (`mask_original`, the crop region's
    original-resolution mask from storage.load_mask_original or preprocess_case) is set to exactly 0.
    """
    channel_data = np.asarray(channel_data)
    expected = tuple(properties["shape_after_resampling"])
    if channel_data.shape != expected:
        raise ValueError(f"invert_preprocessing: channel data has shape {channel_data.shape}, but case "
                         f"{properties['case_id']} was preprocessed to {expected}.")
    shape_after_crop = tuple(properties["shape_after_crop"])
    mask_original = np.asarray(mask_original).astype(bool)
    if mask_original.shape != shape_after_crop:
        raise ValueError(f"invert_preprocessing: mask_original has shape {mask_original.shape}, expected the crop "
                         f"shape {shape_after_crop} of case {properties['case_id']}.")
    params = select_params(properties["normalization"][str(channel)], normalization)
    values = denormalize(channel_data, params)
    resampling = properties["resampling"]
    if tuple(channel_data.shape) != shape_after_crop:
        # The same foreground the forward pass kept, so the fill below starts from the voxels that hold tissue.
        mask = foreground_at_spacing(mask_original, properties["spacing_before_resampling"],
                                     properties["spacing_after_resampling"], expected)
        values = extend_foreground(values[None], mask)[0]
    values = resample_data(values[None], properties["spacing_after_resampling"],
                           properties["spacing_before_resampling"], new_shape=shape_after_crop,
                           order=resampling["order"], order_z=resampling["order_z"],
                           anisotropy_threshold=resampling["anisotropy_threshold"],
                           separate_z=resampling["separate_z_axis"])[0]
    values[~mask_original] = 0
    full = paste_into_bbox(values, properties["bbox"], properties["shape_before_crop"])
    return full, copy.deepcopy(dict(properties["image_props"]))


def export_prediction(channel_data: np.ndarray, properties: Mapping, channel: int, path: str | Path,
                      normalization="case", *, mask_original: np.ndarray) -> None:
    """Invert the preprocessing of one channel and write it (atomically) with the original image's geometry."""
    array, props = invert_preprocessing(channel_data, properties, channel, normalization,
                                        mask_original=mask_original)
    write_image(array, props, path)
