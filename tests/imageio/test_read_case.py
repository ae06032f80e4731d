"""read_case stacks one 3D file per channel and refuses channels on different voxel grids."""
import numpy as np
import pytest
import SimpleITK as sitk

from diffens_auto.imageio import ImageReadError, read_case, read_image, write_image


def write_channel(path, seed, spacing=(0.7, 1.3, 2.9), origin=(-3.0, 4.0, 5.0), size_zyx=(5, 9, 7), direction=None):
    image = sitk.GetImageFromArray(np.random.default_rng(seed).random(size_zyx).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def test_channels_are_stacked_in_order(tmp_path):
    files = [write_channel(tmp_path / f"case_{c:04d}.nii.gz", seed=c) for c in range(3)]
    data, props = read_case(files)
    assert data.shape == (3, 7, 9, 5) and data.dtype == np.float32
    for channel, file in enumerate(files):
        np.testing.assert_array_equal(data[channel], read_image(file)[0])
    assert props == read_image(files[0])[1]


def test_same_grid_in_a_different_axis_order_is_accepted(tmp_path):
    first = write_channel(tmp_path / "case_0000.nii.gz", seed=0)
    _, props = read_image(first)
    # The same canonical grid stored with the first two file axes swapped and one flipped.
    array, _ = read_image(first)
    swapped = dict(props, reorientation={"permutation": [1, 0, 2], "flips": [False, True, False]})
    write_image(array, swapped, tmp_path / "case_0001.nii.gz")
    assert sitk.ReadImage(str(tmp_path / "case_0001.nii.gz")).GetSize() == (9, 7, 5)
    data, _ = read_case([first, tmp_path / "case_0001.nii.gz"])
    np.testing.assert_array_equal(data[0], data[1])


@pytest.mark.parametrize("difference", [
    {"origin": (-3.0, 4.0, 5.01)},
    {"spacing": (0.7, 1.3, 3.0)},
    {"size_zyx": (6, 9, 7)},
    {"direction": (np.cos(0.01), -np.sin(0.01), 0.0, np.sin(0.01), np.cos(0.01), 0.0, 0.0, 0.0, 1.0)},
])
def test_mismatched_channels_name_both_files(tmp_path, difference):
    first = write_channel(tmp_path / "case_0000.nii.gz", seed=0)
    second = write_channel(tmp_path / "case_0001.nii.gz", seed=1, **difference)
    with pytest.raises(ImageReadError) as caught:
        read_case([first, second])
    message = str(caught.value)
    assert "case_0000.nii.gz" in message and "case_0001.nii.gz" in message and "Fix:" in message
    assert list(difference)[0].replace("size_zyx", "shape") in message


def test_empty_file_list():
    with pytest.raises(ValueError):
        read_case([])
