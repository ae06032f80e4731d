"""The data-consistency estimators of adaptation, differentiable: DDS's CG and slab TV-ADMM (D3IP Eq. 27-28, mbir).

Both take the prior's x0 estimate of a few slices and pull it towards their measurement; the adaptation loss is
the measurement misfit of the result (`measurement_loss`), so gradients reach the LoRA set through every CG step.
A hard projection would make that misfit exactly zero (D3IP.md pitfall 2): the estimate must be the soft,
finite-gamma one. Real images, float32/complex64, no autocast (pitfall 6). The operator is anything with A,
AH_real and cg_data_consistency (operators.FileOrderKSpace and its `slab`).

TV-ADMM (mbir) solves min_x gamma/2 ||A x - y||^2 + 1/2 ||x - x0||^2 + lambda ||D x||_1 with D the forward
differences along the slice axis and a Neumann boundary (the last slice has no difference: no coupling of the
first slice to the last): x <- CG on (gamma A^H A + I + rho D^T D) x = gamma A^H y + x0 + rho D^T (z - u),
z <- soft(D x + u, lambda / rho), u <- u + D x - z. `TVState` holds (z, u) of one sample between sampling steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffens_auto.operators.conjugate_gradient import conjugate_gradient


def cg_estimate(operator, x0: torch.Tensor, y: torch.Tensor, gamma: float, steps: int) -> torch.Tensor:
    """DDS's estimate: `steps` CG steps on (gamma A^H A + I) x = gamma A^H y + x0 from x0 (differentiable)."""
    return operator.cg_data_consistency(x0, y, gamma, steps)


def measurement_loss(operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean |A x - y|^2 over the measured points (D3IP Eq. 11's data term)."""
    return (operator.A(x) - y).abs().square().mean()


def forward_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """D x: x[i + 1] - x[i] along `dim` (one fewer entry: Neumann, no wrap-around)."""
    return x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)


def difference_adjoint(d: torch.Tensor, dim: int) -> torch.Tensor:
    """D^T d for `forward_difference`: (D^T d)[i] = d[i - 1] - d[i], with d[-1] = d[n - 1] = 0."""
    zero = torch.zeros_like(d.narrow(dim, 0, 1))
    return torch.cat([zero, d], dim) - torch.cat([d, zero], dim)


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """sign(x) max(|x| - threshold, 0): the proximal map of threshold |.|_1."""
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


@dataclass
class TVState:
    """ADMM's split variable z = D x and its scaled dual u, carried between the steps of one sample."""

    z: torch.Tensor
    u: torch.Tensor


def tv_admm_estimate(operator, x0: torch.Tensor, y: torch.Tensor, *, gamma: float, cg_steps: int, rho: float,
                     lam: float, admm_steps: int, dim: int, state: TVState | None = None
                     ) -> tuple[torch.Tensor, TVState]:
    """The mbir estimate of x0 (module docstring) and the ADMM state after it; without `state` z = D x0, u = 0."""
    x = x0
    if state is None:
        state = TVState(forward_difference(x0, dim), torch.zeros_like(forward_difference(x0, dim)))
    z, u = state.z, state.u

    def normal(v):
        return gamma * operator.AH_real(operator.A(v)) + v + rho * difference_adjoint(forward_difference(v, dim), dim)
    data = gamma * operator.AH_real(y) + x0
    for _ in range(admm_steps):
        # D^T D couples the slices: the whole slab is one system
        x = conjugate_gradient(normal, data + rho * difference_adjoint(z - u, dim), x0=x, num_steps=cg_steps)
        dx = forward_difference(x, dim)
        z = soft_threshold(dx + u, lam / rho)
        u = u + dx - z
    return x, TVState(z.detach(), u.detach())
