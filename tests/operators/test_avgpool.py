"""AvgPoolSR: exact consistency projection, adjointness, Moore-Penrose inverse, partial blocks, numpy helper, up()."""
import numpy as np
import pytest
import torch

from diffens_auto.operators import AvgPoolSR, avgpool_downsample, degrade_image, upsample_to_grid

FACTORS = [(4, 4, 4), (2, 2, 4), (1, 1, 4)]
SHAPES = [(16, 16, 16), (17, 18, 13)]


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_makes_the_estimate_consistent(factor, shape, dtype):
    g = torch.Generator().manual_seed(0)
    op = AvgPoolSR(factor)
    z = torch.randn((2, 1, *shape), generator=g, dtype=dtype)
    x = op.A(torch.randn((2, 1, *shape), generator=g, dtype=dtype))
    projected = op.project(z, x)
    assert projected.shape == z.shape and projected.dtype == dtype
    assert (op.A(projected) - x).abs().max() <= 1e-5


@pytest.mark.parametrize("factor", FACTORS + [(3, 5, 2)])
@pytest.mark.parametrize("shape", SHAPES)
def test_adjoint(factor, shape):
    g = torch.Generator().manual_seed(1)
    op = AvgPoolSR(factor)
    u = torch.randn((2, 3, *shape), generator=g, dtype=torch.float64)
    v = torch.randn(op.A(u).shape, generator=g, dtype=torch.float64)
    left, right = torch.sum(op.A(u) * v), torch.sum(u * op.AT(v, shape))
    assert abs(left - right) <= 1e-10 * abs(left)


def _matrix(fn, n_in, in_shape):
    """Columns fn(e_i) of a linear map on flattened tensors."""
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, *in_shape)
    return fn(eye).reshape(n_in, -1).T


@pytest.mark.parametrize("factor", [(2, 4, 3), (4, 4, 4), (1, 2, 7)])
def test_pinv_is_the_moore_penrose_inverse_with_partial_blocks(factor):
    shape = (5, 6, 7)
    op = AvgPoolSR(factor)
    lr = op.lowres_shape(shape)
    a = _matrix(op.A, int(np.prod(shape)), shape)
    a_pinv = _matrix(lambda y: op.pinv(y, shape), int(np.prod(lr)), lr)
    a_t = _matrix(lambda y: op.AT(y, shape), int(np.prod(lr)), lr)
    torch.testing.assert_close(a_t, a.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(a_pinv, torch.linalg.pinv(a), rtol=0, atol=1e-12)
    # The four Penrose conditions, and A A⁺ = I (A has full row rank).
    torch.testing.assert_close(a @ a_pinv @ a, a, rtol=0, atol=1e-12)
    torch.testing.assert_close(a_pinv @ a @ a_pinv, a_pinv, rtol=0, atol=1e-12)
    torch.testing.assert_close((a @ a_pinv).T, a @ a_pinv, rtol=0, atol=1e-12)
    torch.testing.assert_close((a_pinv @ a).T, a_pinv @ a, rtol=0, atol=1e-12)
    torch.testing.assert_close(a @ a_pinv, torch.eye(a.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_partial_block_averages_only_real_voxels():
    x = torch.arange(6, dtype=torch.float64).reshape(1, 1, 6, 1, 1)
    out = AvgPoolSR((4, 1, 1)).A(x)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.5, 4.5], dtype=torch.float64))
    assert AvgPoolSR(4).A(torch.ones(1, 1, 9, 7, 5)).shape == (1, 1, 3, 2, 2)


def test_factor_one_is_identity_and_pinv_repeats():
    x = torch.randn(1, 2, 4, 5, 6)
    torch.testing.assert_close(AvgPoolSR((1, 1, 1)).A(x), x)
    y = torch.arange(4.0).reshape(1, 1, 2, 2, 1)
    up = AvgPoolSR((2, 1, 3)).pinv(y, (3, 2, 3))
    assert up.shape == (1, 1, 3, 2, 3)
    assert torch.equal(up[0, 0, :, :, 0], torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 3.0]]))
    assert AvgPoolSR(2).pinv(y.expand(1, 1, 2, 2, 2)).shape == (1, 1, 4, 4, 4)  # default hr_shape = shape × f


def test_wrong_hr_shape_and_factor_are_refused():
    op = AvgPoolSR((2, 2, 2))
    with pytest.raises(ValueError, match="ceil"):
        op.AT(torch.zeros(1, 1, 2, 2, 2), (6, 4, 4))
    with pytest.raises(ValueError, match="positive integers"):
        AvgPoolSR((2, 0, 2))


def test_avgpool_downsample_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(9, 7, 5)).astype(np.float32)
    out = avgpool_downsample(volume, (4, 2, 2))
    assert out.dtype == np.float32 and out.shape == (3, 4, 3)
    expected = AvgPoolSR((4, 2, 2)).A(torch.from_numpy(volume.astype(np.float64))[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(avgpool_downsample(torch.from_numpy(volume), (4, 2, 2)), torch.from_numpy(out))


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int64, np.float32, np.float64])
def test_avgpool_downsample_and_degrade_image_share_the_dtype_convention(dtype):
    """Floating input keeps its dtype, integer input gives float32: numpy, torch and degrade_image alike."""
    volume = np.arange(6 * 5 * 4).reshape(6, 5, 4).astype(dtype)
    expected_dtype = np.dtype(dtype) if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)
    means = AvgPoolSR((2, 2, 2)).A(torch.from_numpy(volume.astype(np.float64)))
    props = {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": np.eye(3).tolist(),
             "shape": [6, 5, 4]}
    outputs = [avgpool_downsample(volume, 2), degrade_image(volume, props, {"type": "avgpool", "factor": 2})[0],
               avgpool_downsample(torch.from_numpy(volume), 2).numpy()]
    for out in outputs:
        assert out.dtype == expected_dtype
        np.testing.assert_allclose(out, means.numpy(), rtol=1e-6)


def test_upsample_to_grid_puts_lowres_voxels_at_block_centres():
    factor = (4, 2, 1)
    x = torch.arange(16, dtype=torch.float64)
    ramp = (x.view(-1, 1, 1) + 0.5 * x[:8].view(1, -1, 1) + 0 * x[:6].view(1, 1, -1)).expand(16, 8, 6)[None, None]
    lowres = AvgPoolSR(factor).A(ramp)
    up = upsample_to_grid(lowres, factor, ramp.shape[2:])
    assert up.shape == ramp.shape
    # a linear function is reproduced exactly between the first and last block centres
    torch.testing.assert_close(up[..., 2:14, 1:7, :], ramp[..., 2:14, 1:7, :])
    # a partial last block is cropped away, a missing one padded from the edge
    assert upsample_to_grid(lowres, factor, (14, 8, 6)).shape[2:] == (14, 8, 6)
    padded = upsample_to_grid(lowres, factor, (17, 8, 6))
    torch.testing.assert_close(padded[..., 16, :, :], padded[..., 15, :, :])
