"""MRI k-space undersampling y = M F x with the centred orthonormal FFT, its adjoint and DDS data consistency.

Conventions:
- F is the centred, orthonormal n-D FFT over `dims`: F x = fftshift(fftn(ifftshift(x), norm="ortho")). The image
  origin is voxel n // 2 and the k-space centre (DC) lands at index n // 2 of every transformed axis, where the
  masks of `diffens_auto.operators.masks` put their autocalibration region. F is unitary: Fᴴ = F⁻¹ =
  fftshift(ifftn(ifftshift(·), norm="ortho")).
- The mask M (0/1, or real non-negative weights) broadcasts against the k-space tensor by the usual trailing-dims
  rule: a (Y, Z) mask on (B, C, X, Y, Z) volumes with dims (-3, -2, -1) is one phase-encode plane with the readout
  along X fully sampled; dims (-3, -2) with a (X, Y, 1) mask undersamples every axial slice in 2D.
- Complex handling: A maps real or complex images to COMPLEX k-space (complex64 for float32, complex128 for
  float64). AH returns complex images. For real images the adjoint of A, as a map from real images to complex
  k-space with the real inner product Re⟨·,·⟩, is Re(Aᴴ ·): that is `AH_real`. `cg_data_consistency` solves in the
  dtype of x̂0: complex for complex x̂0, and for real x̂0 the real normal equations (γ Re(AᴴA) + I) x = γ Re(Aᴴy) + x̂0.
- Independent systems: A acts on the `dims` alone, so every index of the other dims (batch items, channels, and
  the slices along a dim the FFT does not run over, whatever their masks) is its own system. CG takes its step
  sizes per system (`conjugate_gradient(..., system_dims=dims)`): a slice's result does not depend on the others.
"""
from __future__ import annotations

from typing import Sequence

import torch

from diffens_auto.operators.conjugate_gradient import conjugate_gradient


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.float64: torch.complex128, torch.complex128: torch.complex128}.get(dtype, torch.complex64)


class KSpaceUndersampling:
    """y = M F x: centred orthonormal FFT over `dims` (default: the mask's number of trailing dims), then the mask."""

    def __init__(self, mask, dims: Sequence[int] | None = None):
        """Keep the mask (any real/bool tensor or array broadcastable to the k-space) and the transformed dims."""
        self.mask = torch.as_tensor(mask)
        if self.mask.is_complex():
            raise ValueError("KSpaceUndersampling: the mask must be real (0/1 or non-negative weights).")
        self.dims = tuple(range(-self.mask.dim(), 0)) if dims is None else tuple(int(d) for d in dims)

    def __repr__(self) -> str:
        return f"KSpaceUndersampling(mask {tuple(self.mask.shape)}, dims={self.dims})"

    def _mask_like(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask.to(device=y.device, dtype=y.real.dtype if y.is_complex() else y.dtype)

    def fft(self, x: torch.Tensor) -> torch.Tensor:
        """Centred orthonormal FFT F over self.dims (complex output)."""
        x = x.to(_complex_dtype(x.dtype))
        shifted = torch.fft.ifftshift(x, dim=self.dims)
        return torch.fft.fftshift(torch.fft.fftn(shifted, dim=self.dims, norm="ortho"), dim=self.dims)

    def ifft(self, k: torch.Tensor) -> torch.Tensor:
        """Centred orthonormal inverse FFT Fᴴ = F⁻¹ over self.dims (complex output)."""
        shifted = torch.fft.ifftshift(k.to(_complex_dtype(k.dtype)), dim=self.dims)
        return torch.fft.fftshift(torch.fft.ifftn(shifted, dim=self.dims, norm="ortho"), dim=self.dims)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Undersampled k-space M F x (complex)."""
        k = self.fft(x)
        return k * self._mask_like(k)

    def AH(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint Fᴴ M y (complex image; M is real so Mᴴ = M)."""
        y = y.to(_complex_dtype(y.dtype))
        return self.ifft(y * self._mask_like(y))

    def AH_real(self, y: torch.Tensor) -> torch.Tensor:
        """Re(Fᴴ M y): the adjoint of A restricted to real images."""
        return self.AH(y).real

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Moore-Penrose inverse Fᴴ M⁺ y (M⁺ = 1/m where m ≠ 0): the zero-filled reconstruction for a 0/1 mask."""
        y = y.to(_complex_dtype(y.dtype))
        mask = self._mask_like(y)
        sampled = mask != 0
        # Inner where keeps 1/0 out of the graph, so gradients stay finite at unsampled points.
        inverse = torch.where(sampled, 1 / torch.where(sampled, mask, torch.ones_like(mask)), torch.zeros_like(mask))
        return self.ifft(y * inverse)

    def project(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Hard data consistency x̂0 − A⁺(A x̂0 − y) (complex; replaces the sampled k-space points by y)."""
        return x0_hat - self.pinv(self.A(x0_hat) - y)

    def cg_data_consistency(self, x0_hat: torch.Tensor, y: torch.Tensor, gamma: float = 5.0,
                            num_steps: int = 5) -> torch.Tensor:
        """DDS step: num_steps CG steps on (γAᴴA + I) x = γAᴴy + x̂0 from x̂0; real x̂0 gives the real solution."""
        # D3IP Eq. 27-28 (DDS): x = argmin γ/2 ||y − A x||² + 1/2 ||x − x̂0||², M CG steps from x̂0 (Eq. 6 puts
        # γ on the other term; Eq. 27-28, with γ on the data term, is what DDS/D3IP run with γ = 5, M = 5).
        if x0_hat.is_complex():
            normal, adjoint = (lambda v: gamma * self.AH(self.A(v)) + v), self.AH
        else:
            normal, adjoint = (lambda v: gamma * self.AH_real(self.A(v)) + v), self.AH_real
        # A never mixes the dims outside the FFT's (batch, channels, the slices of a 2D-per-slice FFT): each index
        # of those is an independent system, solved with its own step sizes as if alone
        return conjugate_gradient(normal, gamma * adjoint(y) + x0_hat, x0=x0_hat, num_steps=num_steps,
                                  system_dims=self.dims)
