"""The interpolation floor: trilinear up(lr) on the SR grid, with and without the exact consistency projection."""
import numpy as np
import pytest

from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference.interpolation import trilinear_folder, trilinear_upsample
from diffens_auto.operators import avgpool_downsample

DEGRADATION = {"type": "avgpool", "factor": [4, 4, 2]}


def _lowres(seed=0):
    rng = np.random.default_rng(seed)
    lowres = rng.uniform(100, 200, (5, 4, 6)).astype(np.float32)
    lowres[0] = 0.0            # a background slab of blocks
    props = {"shape": [5, 4, 6], "spacing": [4.0, 4.0, 2.0], "origin": [0.0, 0.0, 0.0],
             "direction": np.eye(3).tolist()}
    return lowres, props


@pytest.mark.parametrize("project", [False, True])
def test_trilinear_floor_grid_background_and_consistency(project):
    lowres, props = _lowres()
    up, grid = trilinear_upsample(lowres, props, DEGRADATION, project=project)
    assert up.shape == (20, 16, 12) and up.dtype == np.float32
    assert grid["spacing"] == [1.0, 1.0, 1.0]
    assert not up[:4].any()                      # 0 in the blocks whose input is 0
    error = np.abs(avgpool_downsample(up, DEGRADATION["factor"]) - lowres).max()
    if project:
        assert error < 1e-4                      # A(up) = lowres to float32 rounding
    else:
        assert error > 1.0                       # trilinear interpolation alone does not reproduce the block means


def test_trilinear_folder_writes_one_image_per_case(tmp_path):
    lowres, props = _lowres(1)
    write_image(lowres, props, tmp_path / "in" / "a_0000.nii.gz")
    written = trilinear_folder({"a": tmp_path / "in" / "a_0000.nii.gz"}, tmp_path / "out", DEGRADATION, project=True)
    assert [p.name for p in written] == ["a.nii.gz"]
    array, out_props = read_image(written[0])
    canonical, canonical_props = read_image(tmp_path / "in" / "a_0000.nii.gz")   # the file's canonical axes
    expected, grid = trilinear_upsample(canonical, canonical_props, DEGRADATION, project=True)
    np.testing.assert_allclose(array, expected, atol=1e-4)
    np.testing.assert_allclose(out_props["spacing"], grid["spacing"])
