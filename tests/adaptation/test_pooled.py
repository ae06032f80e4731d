"""The pooled (SR) measurement of adaptation: the closed-form soft estimate against the normal equations, whole
blocks, the measured region, the target map and mbir's consistency."""
import numpy as np
import pytest
import torch

from diffens_auto.adaptation import PooledOperator, PooledSlices
from diffens_auto.adaptation.slices import draw_slices
from diffens_auto.operators import AvgPoolSR
from diffens_auto.operators.conjugate_gradient import conjugate_gradient


@pytest.mark.parametrize("shape", [(4, 6, 8), (5, 6, 7)])        # whole blocks, and partial last blocks
def test_the_soft_estimate_solves_the_normal_equations_exactly(shape):
    generator = torch.Generator().manual_seed(0)
    operator = PooledOperator((2, 3, 2), shape)
    x0 = torch.randn((1, 1, *shape), generator=generator, dtype=torch.float64)
    y = operator.A(torch.randn((1, 1, *shape), generator=generator, dtype=torch.float64))
    gamma = 5.0
    estimate = operator.cg_data_consistency(x0, y, gamma)

    def normal(v):
        return gamma * operator.AH_real(operator.A(v)) + v
    solved = conjugate_gradient(normal, gamma * operator.AH_real(y) + x0, x0=x0, num_steps=200)
    assert torch.allclose(estimate, solved, atol=1e-9)
    # soft: between x0 and the hard projection, the misfit shrunk by n_b / (n_b + gamma) per block
    counts = operator.pool.block_counts(shape, torch.float64)
    assert torch.allclose(operator.A(estimate) - y, (operator.A(x0) - y) * counts / (counts + gamma), atol=1e-12)
    assert torch.allclose(operator.A(operator.project(x0, y)), y, atol=1e-12)


def test_the_adjoint_is_the_adjoint_on_partial_blocks():
    operator = PooledOperator((2, 2, 3), (5, 4, 7))
    x = torch.randn(1, 1, 5, 4, 7, dtype=torch.float64)
    y = torch.randn(1, 1, 3, 2, 3, dtype=torch.float64)
    assert torch.allclose((operator.A(x) * y).sum(), (x * operator.AH_real(y)).sum())


def _problem(axis=2, pads=((1, 1), (0, 0), (2, 3)), factor=(2, 2, 4), inner=(6, 4, 10)):
    target = torch.arange(np.prod(inner), dtype=torch.float64).reshape(1, 1, *inner)
    measurement = AvgPoolSR(factor).A(target)
    offset = torch.full((1, 1, *[n + a + b for n, (a, b) in zip(inner, pads)]), 0.5, dtype=torch.float64)
    return PooledSlices(factor, measurement, pads, axis, offset=offset, scale=2.0), target, offset


def test_draws_take_whole_blocks_of_the_measured_region_only():
    problem, target, offset = _problem()
    shape = offset.shape[2:]
    assert problem.block == 4 and problem.region(shape) == (2, 10)    # 10 measured slices: 2 whole blocks of 4
    indices = draw_slices(*problem.region(shape), 1, torch.Generator().manual_seed(3), block=problem.block)
    assert len(indices) == 4 and (indices[0] - 2) % 4 == 0 and (torch.diff(indices) == 1).all()


def test_the_loss_is_zero_at_the_true_target_and_counts_the_right_blocks():
    problem, target, offset = _problem()
    padded = torch.nn.functional.pad(target, (2, 3, 0, 0, 1, 1))
    x0 = (padded - offset) * 2.0          # the diffusion space: target = x0 / scale + offset
    indices = torch.tensor([6, 7, 8, 9])  # the second block along Z
    zero = problem.loss(x0.index_select(4, indices), indices, gamma=5.0, cg_steps=1)
    assert float(zero) < 1e-20
    assert torch.equal(problem.block_means(indices), problem.measurement[..., 1:2])
    shifted = problem.loss(x0.index_select(4, indices) + 2.0, indices, gamma=5.0, cg_steps=1)
    assert float(shifted) == pytest.approx((16 / (16 + 5.0)) ** 2)     # +2 in x0 is +1 in the target, n_b 16


def test_mbirs_consistency_keeps_the_measurement_and_leaves_the_padding():
    problem, target, offset = _problem(axis=0)
    noisy = torch.nn.functional.pad(target, (2, 3, 0, 0, 1, 1)) + torch.randn(1, 1, 8, 4, 15, dtype=torch.float64)
    tv = {"rho": 1e-3, "lam": 1e-5, "admm_steps": 2}
    refined, state = problem.tv_consistency(noisy, gamma=5.0, cg_steps=3, tv=tv, state=None)
    inner = refined[:, :, 1:7, :, 2:12]
    assert torch.allclose(AvgPoolSR((2, 2, 4)).A(inner), problem.measurement, atol=1e-9)
    assert torch.equal(refined[:, :, 0], noisy[:, :, 0]) and state.z.shape[2] == 5
