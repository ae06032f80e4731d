"""Conjugate gradients for a Hermitian positive-definite operator given as a function (real or complex tensors).

`system_dims` says which dims make up one system: the inner products (and so every step size α, β) are reduced
over them alone, and each index of the other dims is an independent system solved side by side. For an operator
that never mixes those other dims (a batch, the slices of a 2D-per-slice k-space operator) the result of one
system is then exactly what solving it alone gives; with one α and β for the whole tensor (system_dims None) a
slice's steps would depend on every other slice's residual.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def _inner(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...] | None) -> torch.Tensor:
    """Real part of ⟨a, b⟩ = Σ conj(a) b over `dims` (kept as size 1), or over the whole tensor (dims None)."""
    product = (a.conj() * b).real if a.is_complex() else a * b
    return product.sum() if dims is None else product.sum(dim=dims, keepdim=True)


def _checked_dims(rhs: torch.Tensor, system_dims: Sequence[int] | None) -> tuple[int, ...] | None:
    if system_dims is None:
        return None
    if not system_dims or any(not -rhs.dim() <= int(d) < rhs.dim() for d in system_dims):
        raise ValueError(f"system_dims must be dims of the {rhs.dim()}-dim right-hand side, got {list(system_dims)}")
    return tuple(sorted({int(d) % rhs.dim() for d in system_dims}))


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """numerator / denominator where `active`, else 0; the inner where keeps 0 / 0 out of values and gradients."""
    safe = torch.where(active, denominator, torch.ones_like(denominator))
    return torch.where(active, numerator / safe, torch.zeros_like(numerator))


def conjugate_gradient(apply_matrix: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       x0: torch.Tensor | None = None, num_steps: int = 5, tol: float = 0.0, *,
                       system_dims: Sequence[int] | None = None) -> torch.Tensor:
    """Solve M x = rhs for Hermitian positive-definite M with at most num_steps CG steps from x0 (default 0).

    system_dims None: the whole tensor is one vector. Else every index of the dims not listed is its own system
    with its own step sizes (see the module). A system stops once ‖r‖ ≤ tol · ‖rhs‖ (tol 0: only when its residual
    vanishes exactly); the others go on, and the loop ends when every system has stopped.
    """
    dims = _checked_dims(rhs, system_dims)
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply_matrix(x)
    p = r.clone()
    rs = _inner(r, r, dims)
    threshold = (tol ** 2) * _inner(rhs, rhs, dims)
    for _ in range(num_steps):
        active = (rs > threshold) & (rs > 0)
        if not bool(active.any()):
            break
        mp = apply_matrix(p)
        curvature = _inner(p, mp, dims)
        # a stopped system takes α = 0 from here on, so its x stays what it would be had it been solved alone
        alpha = _ratio(rs, curvature, active & (curvature > 0))
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = _inner(r, r, dims)
        p = r + _ratio(rs_new, rs, active) * p
        rs = torch.where(active, rs_new, rs)
    return x
