"""The adaptation's data-consistency estimators: DDS's CG on a slab, TV-ADMM's pieces, gradients through both."""
import torch

from diffens_auto.adaptation.consistency import (cg_estimate, difference_adjoint, forward_difference,
                                                 measurement_loss, soft_threshold, tv_admm_estimate)
from diffens_auto.operators import FileOrderKSpace

REORIENTATION = {"permutation": [2, 0, 1], "flips": [True, False, True]}    # canonical Z is file axis 1, flipped


def _problem(shape=(8, 6, 10), seed=0):
    """A canonical volume, its per-slice masked operator (slices along canonical Z) and measurement."""
    generator = torch.Generator().manual_seed(seed)
    file_shape = [0, 0, 0]
    for j, n in enumerate(shape):
        file_shape[REORIENTATION["permutation"][j]] = n
    mask = (torch.rand(file_shape, generator=generator) > 0.6).float()
    operator = FileOrderKSpace(REORIENTATION, mask, [0, 2])     # no FFT along file axis 1 = canonical Z
    x = torch.rand((1, 1, *shape), generator=generator)
    return operator, x, operator.A(x)


def test_a_slab_operator_is_the_full_operator_on_those_slices():
    operator, x, y = _problem()
    indices = torch.tensor([0, 3, 4, 9])
    slab, y_slab = operator.slab(2, indices, y)
    torch.testing.assert_close(slab.A(x.index_select(4, indices)), y_slab)
    # the CG estimate of a slab is the full volume's estimate on those slices: the slices are separate systems
    full = cg_estimate(operator, x * 0.5, y, 5.0, 5)
    torch.testing.assert_close(cg_estimate(slab, (x * 0.5).index_select(4, indices), y_slab, 5.0, 5),
                               full.index_select(4, indices), atol=1e-5, rtol=1e-5)


def test_the_loss_reaches_the_prior_estimate_through_every_cg_step():
    operator, x, y = _problem()
    x0 = (x * 0.3).requires_grad_(True)
    loss = measurement_loss(operator, cg_estimate(operator, x0, y, 5.0, 5), y)
    loss.backward()
    assert float(loss.detach()) > 0 and torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0
    # the soft estimate does not meet the measurement exactly (a hard projection would: loss 0, no gradient)
    assert float(measurement_loss(operator, operator.project(x, y).real, y)) < 1e-10


def test_forward_differences_have_a_neumann_boundary_and_their_adjoint():
    generator = torch.Generator().manual_seed(1)
    x, d = torch.randn(2, 1, 3, 4, 5, generator=generator), torch.randn(2, 1, 3, 4, 4, generator=generator)
    dx = forward_difference(x, 4)
    assert dx.shape[4] == 4            # 5 slices, 4 differences: the last slice is not tied to the first
    torch.testing.assert_close(dx[..., 0], x[..., 1] - x[..., 0])
    torch.testing.assert_close((dx * d).sum(), (x * difference_adjoint(d, 4)).sum())
    assert soft_threshold(torch.tensor([-2.0, -0.5, 0.5, 3.0]), 1.0).tolist() == [-1.0, 0.0, 0.0, 2.0]


def test_tv_admm_without_tv_is_dds_and_with_tv_smooths_along_the_slices():
    operator, x, y = _problem()
    x0 = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    plain, _ = tv_admm_estimate(operator, x0, y, gamma=5.0, cg_steps=30, rho=1e-2, lam=0.0, admm_steps=3, dim=4)
    torch.testing.assert_close(plain, cg_estimate(operator, x0, y, 5.0, 30), atol=1e-4, rtol=1e-4)
    smooth, state = tv_admm_estimate(operator, x0, y, gamma=5.0, cg_steps=10, rho=1.0, lam=0.5, admm_steps=10, dim=4)
    assert forward_difference(smooth, 4).abs().sum() < forward_difference(plain, 4).abs().sum()
    assert state.z.shape == state.u.shape == forward_difference(x0, 4).shape and not state.z.requires_grad
