"""KSpaceUndersampling: adjointness (complex and real images), centring, CG data consistency (DDS)."""
import pytest
import torch

from diffens_auto.operators import KSpaceUndersampling, poisson_disc_mask, uniform_1d_mask


def _cinner(a, b):
    return torch.sum(a.conj() * b)


def _operator_3d():
    """(B, C, X, Y, Z) volumes, readout along X, a Poisson-disc (Y, Z) phase-encode mask."""
    return KSpaceUndersampling(poisson_disc_mask((12, 10), 3, acs=4, seed=0), dims=(-3, -2, -1))


def _operator_slices():
    """2D undersampling of every axial slice: FFT over (X, Y), uniform lines along Y, same for all Z."""
    return KSpaceUndersampling(uniform_1d_mask((8, 12), 3, 4, axis=1, seed=0)[..., None], dims=(-3, -2))


@pytest.mark.parametrize("make", [_operator_3d, _operator_slices])
def test_adjoint_complex_images(make):
    g = torch.Generator().manual_seed(0)
    op = make()
    shape = (2, 1, 8, 12, 10)
    u = torch.randn(shape, generator=g, dtype=torch.complex128)
    v = torch.randn(shape, generator=g, dtype=torch.complex128)
    left, right = _cinner(op.A(u), v), _cinner(u, op.AH(v))
    assert abs(left - right) <= 1e-10 * abs(left)


@pytest.mark.parametrize("make", [_operator_3d, _operator_slices])
def test_adjoint_real_images(make):
    g = torch.Generator().manual_seed(1)
    op = make()
    shape = (1, 2, 8, 12, 10)
    u = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.complex128)
    au = op.A(u)
    assert au.dtype == torch.complex128 and op.AH(v).dtype == torch.complex128
    # The complex inner product holds with AH; for the real-image map, Re⟨Au, v⟩ = ⟨u, AH_real v⟩.
    left, right = _cinner(au, v), _cinner(u.to(torch.complex128), op.AH(v))
    assert abs(left - right) <= 1e-10 * abs(left)
    real_left, real_right = left.real, torch.sum(u * op.AH_real(v))
    assert abs(real_left - real_right) <= 1e-10 * abs(left)


def test_fft_is_centred_and_orthonormal():
    op = KSpaceUndersampling(torch.ones(6, 8))
    x = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    x[..., 3, 4] = 1.0  # image origin at n // 2: a centred delta has a flat, real spectrum
    k = op.A(x)
    torch.testing.assert_close(k, torch.full_like(k, 1 / 48 ** 0.5))
    ones = torch.ones(1, 1, 6, 8, dtype=torch.float64)
    dc = op.A(ones)
    assert abs(dc[..., 3, 4].item() - 48 ** 0.5) < 1e-12  # DC at index n // 2
    assert dc.abs().sum() - dc[..., 3, 4].abs() < 1e-12
    u = torch.randn(1, 1, 6, 8, dtype=torch.complex128)
    torch.testing.assert_close(op.AH(op.A(u)), u)
    assert abs(op.A(u).norm() - u.norm()) < 1e-12


def test_pinv_and_project_restore_sampled_kspace():
    op = _operator_slices()
    g = torch.Generator().manual_seed(2)
    truth = torch.randn(1, 1, 8, 12, 10, generator=g, dtype=torch.complex128)
    y = op.A(truth)
    torch.testing.assert_close(op.A(op.pinv(y)), y)
    projected = op.project(torch.randn(truth.shape, generator=g, dtype=torch.complex128), y)
    torch.testing.assert_close(op.A(projected), y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_cg_data_consistency_reduces_misfit(dtype):
    g = torch.Generator().manual_seed(3)
    op = _operator_3d()
    truth = torch.randn(1, 1, 8, 12, 10, generator=g, dtype=dtype)
    y = op.A(truth)
    x0_hat = truth + 0.5 * torch.randn(truth.shape, generator=g, dtype=dtype)
    x = op.cg_data_consistency(x0_hat, y, gamma=5.0, num_steps=5)
    assert x.dtype == dtype
    assert (op.A(x) - y).norm() < 0.5 * (op.A(x0_hat) - y).norm()
    # Many steps reach the exact minimiser: its gradient γAᴴ(Ax − y) + (x − x̂0) vanishes.
    exact = op.cg_data_consistency(x0_hat, y, gamma=5.0, num_steps=200)
    adjoint = op.AH if dtype.is_complex else op.AH_real
    gradient = 5.0 * adjoint(op.A(exact) - y) + exact - x0_hat
    assert gradient.abs().max() < 1e-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64])
def test_cg_data_consistency_closed_form_for_full_mask(dtype):
    g = torch.Generator().manual_seed(4)
    op = KSpaceUndersampling(torch.ones(8, 12, 10))
    image = torch.randn(1, 1, 8, 12, 10, generator=g, dtype=dtype)
    y = op.A(image + 0.1 * torch.randn(image.shape, generator=g, dtype=dtype))
    x0_hat = torch.randn(image.shape, generator=g, dtype=dtype)
    gamma = 5.0
    x = op.cg_data_consistency(x0_hat, y, gamma=gamma, num_steps=5)
    y_image = op.AH(y) if dtype.is_complex else op.AH_real(y)
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12
    torch.testing.assert_close(x, (gamma * y_image + x0_hat) / (gamma + 1), rtol=tol, atol=tol)


def test_cg_data_consistency_is_differentiable():
    """D3IP back-propagates its loss through the CG refinement to the network's estimate."""
    op = _operator_3d()
    y = op.A(torch.randn(1, 1, 8, 12, 10, dtype=torch.float64))
    x0_hat = torch.randn(1, 1, 8, 12, 10, dtype=torch.float64, requires_grad=True)
    loss = (op.A(op.cg_data_consistency(x0_hat, y)) - y).abs().pow(2).sum()
    loss.backward()
    assert x0_hat.grad is not None and torch.isfinite(x0_hat.grad).all() and x0_hat.grad.abs().sum() > 0
