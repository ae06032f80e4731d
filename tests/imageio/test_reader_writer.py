"""Round trips through read_image/write_image for oblique, permuted and flipped SimpleITK files."""
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt

from diffens_auto.imageio import index_to_world, read_image, with_spacing, write_image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
RAS_SIGNS_IN_LPS = np.array([-1.0, -1.0, 1.0])  # +R, +A, +S expressed in LPS world coordinates


def rotation(angle_deg: float, axis: int) -> np.ndarray:
    """Rotation matrix about one world axis."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def lps_direction(axcodes: str, oblique: bool) -> np.ndarray:
    """LPS direction whose file axes point (roughly) toward `axcodes`, optionally rotated 20 deg about two axes."""
    ras = np.zeros((3, 3))
    for file_axis, (ras_axis, sign) in enumerate(axcodes2ornt(tuple(axcodes))):
        ras[int(ras_axis), file_axis] = sign
    direction = LPS_TO_RAS @ ras
    return rotation(20, 0) @ rotation(20, 1) @ direction if oblique else direction


def write_test_image(path, axcodes: str, oblique: bool = True, shape=(7, 9, 5), dtype=np.float32) -> sitk.Image:
    """Write a random image with anisotropic spacing and a non-zero origin; return it as SimpleITK reads it back."""
    rng = np.random.default_rng(0)
    data = (rng.random(shape[::-1]) * 1000).astype(dtype)  # sitk arrays are (z, y, x)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-31.5, 12.25, 77.0))
    image.SetDirection(lps_direction(axcodes, oblique).ravel().tolist())
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


def file_value(image: sitk.Image, index) -> float:
    return float(image.GetPixel([int(i) for i in index]))


def sample_indices(shape, n=12, seed=1) -> np.ndarray:
    """Corners plus random voxels of a grid."""
    rng = np.random.default_rng(seed)
    corners = [[c0, c1, c2] for c0 in (0, shape[0] - 1) for c1 in (0, shape[1] - 1) for c2 in (0, shape[2] - 1)]
    return np.concatenate([np.array(corners), rng.integers(0, shape, size=(n, 3))])


def assert_canonical_ras(direction) -> None:
    direction = np.asarray(direction)
    for j in range(3):
        row = int(np.argmax(np.abs(direction[:, j])))
        assert row == j, direction
        assert np.sign(direction[row, j]) == RAS_SIGNS_IN_LPS[j], direction


ORIENTATIONS = ["LPS", "RAS", "PIR", "LIP", "SAL", "RPI"]


@pytest.mark.parametrize("axcodes", ORIENTATIONS)
@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_read_gives_canonical_array_with_unchanged_voxel_positions(tmp_path, axcodes, ending):
    file_image = write_test_image(tmp_path / f"in{ending}", axcodes)
    array, props = read_image(tmp_path / f"in{ending}")

    assert array.dtype == np.float32 and array.flags.c_contiguous
    assert list(array.shape) == props["shape"]
    assert_canonical_ras(props["direction"])
    np.testing.assert_allclose(np.abs(np.linalg.det(props["direction"])), 1.0, atol=1e-6)
    for index in sample_indices(array.shape):
        world = index_to_world(props, index)
        file_index = np.array(file_image.TransformPhysicalPointToContinuousIndex(world.tolist()))
        np.testing.assert_allclose(file_index, np.round(file_index), atol=1e-4)
        file_index = np.round(file_index).astype(int)
        np.testing.assert_allclose(file_image.TransformIndexToPhysicalPoint(file_index.tolist()), world, atol=1e-4)
        assert array[tuple(index)] == file_value(file_image, file_index)


@pytest.mark.parametrize("axcodes", ORIENTATIONS)
@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_write_restores_the_file_exactly(tmp_path, axcodes, ending):
    original = write_test_image(tmp_path / f"in{ending}", axcodes)
    array, props = read_image(tmp_path / f"in{ending}")
    write_image(array, props, tmp_path / f"out{ending}")

    written = sitk.ReadImage(str(tmp_path / f"out{ending}"))
    assert written.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)


def test_axis_aligned_lps_file_is_only_flipped(tmp_path):
    write_test_image(tmp_path / "lps.nii.gz", "LPS", oblique=False)
    _, props = read_image(tmp_path / "lps.nii.gz")
    assert props["reorientation"] == {"permutation": [0, 1, 2], "flips": [True, True, False]}
    np.testing.assert_allclose(props["direction"], np.diag([-1.0, -1.0, 1.0]), atol=1e-7)
    assert props["io"] == {"backend": "simpleitk"}


@pytest.mark.parametrize("axcodes", ["PIR", "LIP", "RAS"])
def test_write_of_a_finer_grid_keeps_voxel_positions(tmp_path, axcodes):
    write_test_image(tmp_path / "in.nii.gz", axcodes)
    array, props = read_image(tmp_path / "in.nii.gz")
    fine_shape = [4 * n for n in array.shape]
    fine_props = with_spacing(props, [s / 4 for s in props["spacing"]], fine_shape)
    fine = np.random.default_rng(2).random(fine_shape).astype(np.float32)
    write_image(fine, fine_props, tmp_path / "fine.nii.gz")

    written = sitk.ReadImage(str(tmp_path / "fine.nii.gz"))
    assert sorted(written.GetSize()) == sorted(fine_shape)
    for index in sample_indices(fine.shape, n=20):
        world = index_to_world(fine_props, index)
        file_index = np.array(written.TransformPhysicalPointToContinuousIndex(world.tolist()))
        np.testing.assert_allclose(file_index, np.round(file_index), atol=1e-3)
        assert fine[tuple(index)] == file_value(written, np.round(file_index).astype(int))
    again, again_props = read_image(tmp_path / "fine.nii.gz")
    np.testing.assert_array_equal(again, fine)
    for key in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(again_props[key], fine_props[key], atol=1e-4)


def test_fine_grid_covers_the_same_field_of_view(tmp_path):
    write_test_image(tmp_path / "in.nii.gz", "PIR")
    _, props = read_image(tmp_path / "in.nii.gz")
    fine = with_spacing(props, [s / 4 for s in props["spacing"]], [4 * n for n in props["shape"]])
    # The mean of each 4x4x4 block of fine voxel centres is the coarse voxel centre (average pooling's geometry).
    block_centre = np.mean([index_to_world(fine, [a, b, c]) for a in range(4) for b in range(4) for c in range(4)], 0)
    np.testing.assert_allclose(block_centre, index_to_world(props, [0, 0, 0]), atol=1e-9)


def test_write_keeps_integer_arrays_and_casts_floats_to_float32(tmp_path):
    write_test_image(tmp_path / "in.nii.gz", "PIR")
    array, props = read_image(tmp_path / "in.nii.gz")
    write_image(array.astype(np.int16), props, tmp_path / "labels.nii.gz")
    write_image(array.astype(np.float64), props, tmp_path / "double.nii.gz")
    assert sitk.ReadImage(str(tmp_path / "labels.nii.gz")).GetPixelID() == sitk.sitkInt16
    assert sitk.ReadImage(str(tmp_path / "double.nii.gz")).GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(read_image(tmp_path / "labels.nii.gz")[0], array.astype(np.int16))


def test_write_leaves_no_temporary_files(tmp_path):
    write_test_image(tmp_path / "in.nii.gz", "LPS")
    array, props = read_image(tmp_path / "in.nii.gz")
    write_image(array, props, tmp_path / "out" / "case.nii.gz")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.nii.gz"]


def test_integer_file_is_read_as_float32(tmp_path):
    write_test_image(tmp_path / "in.nrrd", "RAS", dtype=np.int16)
    array, _ = read_image(tmp_path / "in.nrrd")
    assert array.dtype == np.float32


def test_trailing_size_one_fourth_dimension_is_squeezed(tmp_path):
    image = sitk.GetImageFromArray(np.arange(7 * 9 * 5, dtype=np.float32).reshape(1, 5, 9, 7), isVector=False)
    image.SetSpacing((0.7, 1.3, 2.9, 1.0))
    sitk.WriteImage(image, str(tmp_path / "one_volume.mha"))
    array, props = read_image(tmp_path / "one_volume.mha")
    assert array.shape == (7, 9, 5)
    np.testing.assert_allclose(props["spacing"], [0.7, 1.3, 2.9])
