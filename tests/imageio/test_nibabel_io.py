"""The nibabel fallback for NIfTI files SimpleITK refuses (a sheared, non-orthonormal sform)."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from diffens_auto.imageio import index_to_world, read_image, write_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# File axis 0 points mostly to +A, axis 1 to -R, axis 2 to +S, with a shear between the first two.
SHEARED_SFORM = np.array([[0.4, -1.5, 0.0, 10.0],
                          [2.0, 0.3, 0.0, -20.0],
                          [0.0, 0.2, 3.0, 5.0],
                          [0.0, 0.0, 0.0, 1.0]])


def write_sheared_nifti(path, qform_code=0, sform_code=2):
    data = np.random.default_rng(0).random((7, 9, 5)).astype(np.float32)
    image = nib.Nifti1Image(data, None)
    image.set_sform(SHEARED_SFORM, code=sform_code)
    image.set_qform(None, code=qform_code)
    nib.save(image, str(path))
    return data


def test_simpleitk_really_refuses_the_sheared_file(tmp_path):
    write_sheared_nifti(tmp_path / "sheared.nii.gz")
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(tmp_path / "sheared.nii.gz"))


def test_sheared_sform_with_a_valid_qform_is_read_by_simpleitk_from_the_qform(tmp_path):
    # ITK's documented behaviour: a non-orthonormal sform is ignored when a qform exists; no fallback then.
    write_sheared_nifti(tmp_path / "sheared.nii.gz", qform_code=1)
    assert read_image(tmp_path / "sheared.nii.gz")[1]["io"] == {"backend": "simpleitk"}


def test_sheared_file_is_read_with_nibabel_and_keeps_voxel_positions(tmp_path):
    data = write_sheared_nifti(tmp_path / "sheared.nii.gz")
    array, props = read_image(tmp_path / "sheared.nii.gz")

    assert props["io"] == {"backend": "nibabel", "qform_code": 0, "sform_code": 2}
    assert props["reorientation"] == {"permutation": [1, 0, 2], "flips": [True, False, False]}
    assert array.shape == (9, 7, 5) and props["shape"] == [9, 7, 5]
    np.testing.assert_allclose(np.linalg.norm(props["direction"], axis=0), 1.0)
    rng = np.random.default_rng(1)
    for file_index in rng.integers(0, data.shape, size=(15, 3)):
        world_lps = LPS_TO_RAS @ (SHEARED_SFORM @ np.append(file_index, 1.0))[:3]
        canonical_index = (array.shape[0] - 1 - file_index[1], file_index[0], file_index[2])
        np.testing.assert_allclose(index_to_world(props, canonical_index), world_lps, atol=1e-5)
        assert array[canonical_index] == data[tuple(file_index)]


@pytest.mark.parametrize("qform_code, sform_code", [(0, 2), (0, 4)])
def test_sheared_file_is_written_back_through_nibabel(tmp_path, qform_code, sform_code):
    data = write_sheared_nifti(tmp_path / "sheared.nii.gz", qform_code, sform_code)
    array, props = read_image(tmp_path / "sheared.nii.gz")
    write_image(array, props, tmp_path / "out.nii.gz")

    written = nib.load(str(tmp_path / "out.nii.gz"))
    assert int(written.header["qform_code"]) == qform_code
    assert int(written.header["sform_code"]) == sform_code
    np.testing.assert_allclose(written.get_sform(), SHEARED_SFORM, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), data)
    assert written.get_data_dtype() == np.float32
