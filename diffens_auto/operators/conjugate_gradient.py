"""Conjugate gradients for a Hermitian positive-definite operator given as a function (real or complex tensors)."""
from __future__ import annotations

from typing import Callable

import torch


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of ⟨a, b⟩ = Σ conj(a) b over the whole tensor (real for the Hermitian forms CG needs)."""
    return torch.sum(a.conj() * b).real if a.is_complex() else torch.sum(a * b)


def conjugate_gradient(apply_matrix: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       x0: torch.Tensor | None = None, num_steps: int = 5, tol: float = 0.0) -> torch.Tensor:
    """Solve M x = rhs for Hermitian positive-definite M with at most num_steps CG steps from x0 (default 0).

    The whole tensor is one vector (a batch is solved as one block-diagonal system). Stops early once
    ‖r‖ ≤ tol · ‖rhs‖ (tol 0: only when the residual vanishes exactly).
    """
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply_matrix(x)
    p = r.clone()
    rs = _inner(r, r)
    threshold = (tol ** 2) * _inner(rhs, rhs)
    for _ in range(num_steps):
        if rs <= threshold or rs == 0:
            break
        mp = apply_matrix(p)
        alpha = rs / _inner(p, mp)
        x = x + alpha * p
        r = r - alpha * mp
        rs_new = _inner(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x
