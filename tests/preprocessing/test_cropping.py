import numpy as np
import pytest

from diffens_auto.foreground import EmptyCaseError, bounding_box, crop_to_bbox, nonzero_mask
from diffens_auto.preprocessing.cropping import crop_to_nonzero, paste_into_bbox


def test_nonzero_mask_is_any_channel_and_keeps_holes():
    data = np.zeros((2, 6, 7, 8), np.float32)
    data[0, 1:4, 2:5, 3:6] = 1.0
    data[0, 2, 3, 4] = 0.0  # a hole: stays background
    data[1, 5, 6, 7] = -2.0  # a negative value in another channel is foreground
    mask = nonzero_mask(data)
    assert mask.dtype == bool and mask.shape == (6, 7, 8)
    assert mask.sum() == 27 - 1 + 1
    assert not mask[2, 3, 4] and mask[5, 6, 7]


def test_bounding_box_crop_and_paste_invert_each_other():
    rng = np.random.default_rng(0)
    data = np.zeros((1, 10, 12, 9), np.float32)
    data[0, 2:7, 3:11, 4:5] = rng.uniform(1, 2, (5, 8, 1))
    cropped, mask, bbox = crop_to_nonzero(data)
    assert bbox == [[2, 7], [3, 11], [4, 5]]
    assert cropped.shape == (1, 5, 8, 1) and mask.all()
    assert np.array_equal(paste_into_bbox(cropped[0], bbox, data.shape[1:]), data[0])
    assert np.array_equal(crop_to_bbox(data, bbox), cropped)
    assert bounding_box(nonzero_mask(data)) == bbox


def test_all_zero_case_is_a_clear_error():
    with pytest.raises(EmptyCaseError, match=r"case BraTS_007 \(a\.nii\.gz\).*every voxel.*Fix"):
        crop_to_nonzero(np.zeros((1, 4, 4, 4)), "BraTS_007", ["a.nii.gz"])
    with pytest.raises(ValueError):
        bounding_box(np.zeros((3, 3, 3), bool))
