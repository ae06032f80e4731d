import numpy as np
import pytest

from diffens_auto.preprocessing import resampling
from diffens_auto.preprocessing.resampling import compute_new_shape, resample_data, resample_mask, separate_z_axis


def test_compute_new_shape_rounds_physical_extent():
    assert compute_new_shape((32, 32, 14), (1, 1, 2.5), (1, 1, 1)) == (32, 32, 35)
    assert compute_new_shape((33, 10, 3), (1, 1, 1), (2, 0.5, 4)) == (16, 20, 1)  # 16.5 rounds half to even


@pytest.mark.parametrize("current, new, expected", [
    ((1, 1, 3.5), (1, 1, 1), 2),          # thick slices along Z
    ((1, 4, 1), (1, 1, 1), 1),            # thick along Y
    ((1, 1, 2.5), (1, 1, 1), None),       # below the threshold: full 3D
    ((1, 1, 1), (1, 1, 4), 2),            # the new spacing is the anisotropic one
    ((3.5, 3.5, 1), (1, 1, 1), None),     # two equally coarse axes: full 3D (as nnU-Net)
    ((1, 1, 3.0), (1, 1, 1), None),       # ratio must exceed the threshold
])
def test_separate_z_rule(current, new, expected):
    assert separate_z_axis(current, new, 3.0) == expected


def test_shapes_dtype_and_identity():
    data = np.random.default_rng(0).normal(size=(2, 9, 8, 5)).astype(np.float64)
    out = resample_data(data, (1, 1, 2), (0.5, 2, 1))
    assert out.shape == (2, 18, 4, 10) and out.dtype == np.float32
    same = resample_data(data, (1, 1, 2), (1, 1, 2))
    assert same.dtype == np.float32 and np.array_equal(same, data.astype(np.float32))
    assert resample_data(data, (1, 1, 2), (1, 1, 1), new_shape=(7, 7, 7)).shape == (2, 7, 7, 7)


def test_orders_nearest_keeps_values_linear_reproduces_ramps():
    labels = np.random.default_rng(1).integers(0, 4, size=(1, 6, 6, 6)).astype(np.float32)
    nearest = resample_data(labels, (1, 1, 1), (0.5, 0.5, 0.5), order=0)
    assert set(np.unique(nearest)) <= set(np.unique(labels))
    ramp = np.broadcast_to(np.arange(8.0)[:, None, None], (8, 4, 4))[None]
    up = resample_data(ramp, (1, 1, 1), (0.5, 1, 1), order=1)[0]
    # Output voxel o samples input coordinate (o + 0.5) / 2 - 0.5 (extent-preserving grid); edges are clamped.
    expected = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
    assert np.allclose(up[:, 0, 0], expected, atol=1e-6)
    smooth = np.sin(np.linspace(0, 2, 20))[:, None, None] * np.ones((1, 6, 6))
    cubic = resample_data(smooth[None], (1, 1, 1), (0.5, 1, 1), order=3)[0]
    coordinate = np.clip((np.arange(40) + 0.5) / 2 - 0.5, 0, 19)
    inner = slice(10, 30)  # spline boundary effects of the edge mode fade within ~5 input voxels
    assert np.allclose(cubic[inner, 2, 2], np.sin(coordinate[inner] * 2 / 19), atol=1e-4)


def test_anisotropic_data_is_resampled_along_z_separately_with_order_z():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(1, 8, 8, 4))
    thick = resample_data(data, (1, 1, 4), (1, 1, 2), order=3, order_z=0)
    assert thick.shape == (1, 8, 8, 8)
    # nearest neighbour along z: every output slice is one of the input slices, untouched in-plane
    for k in range(8):
        assert any(np.allclose(thick[0, :, :, k], data[0, :, :, j], atol=1e-6) for j in range(4))
    full_3d = resample_data(data, (1, 1, 4), (1, 1, 2), order=3, order_z=0, anisotropy_threshold=10.0)
    assert not any(np.allclose(full_3d[0, :, :, 1], data[0, :, :, j], atol=1e-3) for j in range(4))


def test_separate_path_is_used_only_when_anisotropic(monkeypatch):
    calls = []
    original = resampling._zoom_separate
    monkeypatch.setattr(resampling, "_zoom_separate", lambda *a: calls.append(a[2]) or original(*a))
    data = np.ones((1, 6, 6, 6))
    resample_data(data, (1, 1, 2.5), (1, 1, 1))
    assert calls == []
    resample_data(data, (1, 3.5, 1), (1, 1, 1))
    assert calls == [1]
    resample_data(data, (1, 1, 1), (1, 1, 1.5), separate_z=0)
    assert calls == [1, 0]


def test_resample_mask():
    mask = np.zeros((10, 10, 4), bool)
    mask[2:8, 3:7, 1:3] = True
    up = resample_mask(mask, (1, 1, 2), (1, 1, 1))
    assert up.dtype == bool and up.shape == (10, 10, 8)
    assert up[:, :, 2:6].sum() == mask[:, :, 1:3].sum() * 2 and not up[:, :, [0, 1, 6, 7]].any()
    nearest = resample_mask(mask, (1, 1, 2), (1, 1, 1), method="nearest")
    assert nearest.sum() == mask.sum() * 2
    with pytest.raises(ValueError, match="method"):
        resample_mask(mask, (1, 1, 2), (1, 1, 1), method="cubic")
