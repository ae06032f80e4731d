"""conjugate_gradient on small Hermitian positive-definite systems."""
import pytest
import torch

from diffens_auto.operators import conjugate_gradient


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_solves_small_spd_system(dtype):
    g = torch.Generator().manual_seed(0)
    n = 12
    b = torch.randn(n, n, generator=g, dtype=dtype)
    matrix = b.conj().T @ b + 0.5 * torch.eye(n, dtype=dtype)
    rhs = torch.randn(3, 4, generator=g, dtype=dtype)  # any shape: flattened to one vector
    x = conjugate_gradient(lambda v: (matrix @ v.reshape(n)).reshape(3, 4), rhs, num_steps=100, tol=1e-12)
    torch.testing.assert_close(x.reshape(n), torch.linalg.solve(matrix, rhs.reshape(n)), rtol=1e-6, atol=1e-6)


def test_starts_at_x0_and_stops_at_exact_solution():
    matrix = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    rhs = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    solution = torch.ones(3, dtype=torch.float64)
    # From the solution itself the residual is zero: no step, no division by zero.
    assert torch.equal(conjugate_gradient(lambda v: matrix @ v, rhs, x0=solution, num_steps=5), solution)
    # n distinct eigenvalues: exact in n steps; the remaining steps are skipped, not NaN.
    x = conjugate_gradient(lambda v: matrix @ v, rhs, num_steps=10)
    torch.testing.assert_close(x, solution)
    assert conjugate_gradient(lambda v: matrix @ v, rhs, num_steps=0).abs().sum() == 0
