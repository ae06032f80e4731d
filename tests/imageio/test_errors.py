"""Files that cannot become one 3D volume raise ImageReadError naming the file, the problem and a fix."""
import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from diffens_auto.imageio import ImageReadError, read_image


def valid_volume(path):
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((5, 9, 7)).astype(np.float32)), str(path))


def assert_clear_error(path, *words):
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert path.name in message and "Fix:" in message
    for word in words:
        assert word in message
    return message


@pytest.mark.parametrize("name", ["case.nii.gz", "case.nii"])
@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_nifti(tmp_path, name, fraction):
    # ITK reads a truncated NIfTI without complaint (missing voxels become zeros), so this must be caught by us.
    valid_volume(tmp_path / name)
    content = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(content[: int(len(content) * fraction)])
    message = assert_clear_error(tmp_path / name)
    assert "truncated" in message or "damaged" in message


@pytest.mark.parametrize("name", ["case.mha", "case.nrrd"])
def test_truncated_other_formats(tmp_path, name):
    valid_volume(tmp_path / name)
    content = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(content[: int(len(content) * 0.9)])
    assert_clear_error(tmp_path / name)


def test_complete_multi_member_gzip_is_accepted(tmp_path):
    # bgzip-style files hold several gzip members; the last one's size trailer is not the whole file's.
    valid_volume(tmp_path / "plain.nii")
    content = (tmp_path / "plain.nii").read_bytes()
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(content[:700]) + gzip.compress(content[700:]))
    np.testing.assert_array_equal(read_image(tmp_path / "multi.nii.gz")[0], read_image(tmp_path / "plain.nii")[0])


@pytest.mark.parametrize("name", ["notes.txt", "notes.nii.gz", "notes.mha"])
def test_text_file(tmp_path, name):
    (tmp_path / name).write_text("this is not an image\n")
    assert_clear_error(tmp_path / name)


def test_text_file_with_unknown_ending_suggests_nifti(tmp_path):
    (tmp_path / "notes.txt").write_text("this is not an image\n")
    assert "convert it to NIfTI" in assert_clear_error(tmp_path / "notes.txt")


def test_missing_file(tmp_path):
    assert_clear_error(tmp_path / "missing.nii.gz", "does not exist")


def test_2d_image(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 7), np.float32)), str(tmp_path / "slice.nii.gz"))
    assert_clear_error(tmp_path / "slice.nii.gz", "2D", "[7, 9]")


@pytest.mark.parametrize("name", ["series.nii.gz", "series.mha"])
def test_4d_image(tmp_path, name):
    image = sitk.GetImageFromArray(np.zeros((3, 5, 9, 7), np.float32), isVector=False)
    sitk.WriteImage(image, str(tmp_path / name))
    assert_clear_error(tmp_path / name, "4D", "[7, 9, 5, 3]", "split it")


def test_vector_image(tmp_path):
    scalar = sitk.GetImageFromArray(np.zeros((5, 9, 7), np.float32))
    sitk.WriteImage(sitk.Compose([scalar, scalar, scalar]), str(tmp_path / "rgb.mha"))
    assert_clear_error(tmp_path / "rgb.mha", "3 components")


def test_degenerate_affine_that_neither_backend_accepts(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[2, 2] = 0.0  # all voxels of a slice column collapse onto one point
    image = nib.Nifti1Image(np.zeros((7, 9, 5), np.float32), None)
    image.set_sform(affine, code=2)
    image.set_qform(None, code=0)
    nib.save(image, str(tmp_path / "flat.nii.gz"))
    assert_clear_error(tmp_path / "flat.nii.gz", "degenerate")
