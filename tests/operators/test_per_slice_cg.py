"""CG per independent system: a stack of slices (or a batch) solves as each of its slices (items) alone."""
import pytest
import torch

from diffens_auto.operators import (FileOrderKSpace, KSpaceUndersampling, conjugate_gradient, kspace_fft_axes,
                                    kspace_mask)

SHAPE = (10, 9, 6)   # canonical (X, Y, Z)
PER_SLICE = {"type": "kspace", "mask": "poisson", "acceleration": 3, "acs": 2, "slice_axis": 2, "mask_per_slice": True}
PERMUTED_FLIPPED = {"permutation": [2, 0, 1], "flips": [True, False, True]}


def _random(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("num_steps", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_a_stack_of_per_slice_masks_solves_as_each_slice_alone(dtype, num_steps, weighted):
    mask = kspace_mask(PER_SLICE, SHAPE, seed=3).double()             # (X, Y, Z): its own mask per axial slice
    if weighted:
        # weights instead of 0/1: AᴴA has many eigenvalues, so 5 CG steps do not solve the system exactly
        mask = mask * (0.2 + torch.rand(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    op = KSpaceUndersampling(mask, dims=(-3, -2))
    x_true, x0_hat = _random((2, 1) + SHAPE, dtype, 1), _random((2, 1) + SHAPE, dtype, 2)
    y = op.A(x_true)
    stacked = op.cg_data_consistency(x0_hat, y, gamma=5.0, num_steps=num_steps)
    for b in range(2):
        for z in range(SHAPE[2]):
            alone = KSpaceUndersampling(mask[..., z:z + 1], dims=(-3, -2)).cg_data_consistency(
                x0_hat[b:b + 1, ..., z:z + 1], y[b:b + 1, ..., z:z + 1], gamma=5.0, num_steps=num_steps)
            assert _relative(stacked[b:b + 1, ..., z:z + 1], alone) <= 1e-10
    # one step size for the whole tensor (the former CG) couples the slices unless CG has converged exactly (with a
    # 0/1 mask and y = A x the residual lies where γAᴴA + I has one eigenvalue, γ Re(AᴴA) + I two): the check above
    # would see the difference
    normal = (lambda v: 5.0 * op.AH(op.A(v)) + v) if dtype.is_complex else (lambda v: 5.0 * op.AH_real(op.A(v)) + v)
    adjoint = op.AH if dtype.is_complex else op.AH_real
    coupled = conjugate_gradient(normal, 5.0 * adjoint(y) + x0_hat, x0=x0_hat, num_steps=num_steps)
    converged = not weighted and num_steps >= (1 if dtype.is_complex else 2)
    assert (_relative(coupled, stacked) > 1e-6) == (not converged)


def test_the_file_order_operator_solves_each_canonical_slice_alone():
    canonical_mask = kspace_mask(PER_SLICE, SHAPE, seed=4)
    op = FileOrderKSpace.from_canonical_mask(PERMUTED_FLIPPED, canonical_mask, kspace_fft_axes(PER_SLICE))
    x_true, x0_hat = _random((1, 1) + SHAPE, torch.complex128, 5), _random((1, 1) + SHAPE, torch.complex128, 6)
    y = op.A(x_true)
    stacked = op.cg_data_consistency(x0_hat, y, gamma=5.0, num_steps=5)
    file_slice_axis = PERMUTED_FLIPPED["permutation"][2]              # canonical Z is this file axis
    for z in range(SHAPE[2]):
        # canonical slice z is one file slice (reversed order: Z is flipped)
        index = SHAPE[2] - 1 - z
        taken = [slice(None)] * 3
        taken[file_slice_axis] = slice(index, index + 1)
        alone_op = FileOrderKSpace(PERMUTED_FLIPPED, op.mask[tuple(taken)], op.fft_axes)
        alone = alone_op.cg_data_consistency(x0_hat[..., z:z + 1], y[(..., *taken)], gamma=5.0, num_steps=5)
        assert _relative(stacked[..., z:z + 1], alone) <= 1e-10


def test_system_dims_solve_a_batch_of_small_systems_independently():
    g = torch.Generator().manual_seed(0)
    matrices = []
    for _ in range(3):
        b = torch.randn(4, 4, generator=g, dtype=torch.float64)
        matrices.append(b.T @ b + 0.5 * torch.eye(4, dtype=torch.float64))
    matrices = torch.stack(matrices)                                    # (3, 4, 4)
    rhs = torch.randn(3, 4, generator=g, dtype=torch.float64)
    rhs[1] = 0                                                          # an already solved system stays at 0

    def apply(v):
        return (matrices @ v.unsqueeze(-1)).squeeze(-1)
    together = conjugate_gradient(apply, rhs, num_steps=3, system_dims=[-1])
    for i in range(3):
        alone = conjugate_gradient(lambda v: matrices[i] @ v, rhs[i], num_steps=3)
        assert torch.allclose(together[i], alone, rtol=1e-12, atol=1e-14)
    assert torch.equal(together[1], torch.zeros(4, dtype=torch.float64))
    exact = conjugate_gradient(apply, rhs, num_steps=50, tol=1e-14, system_dims=[1])
    assert torch.allclose(exact, torch.linalg.solve(matrices, rhs), atol=1e-10)
    with pytest.raises(ValueError, match="system_dims"):
        conjugate_gradient(apply, rhs, system_dims=[2])
