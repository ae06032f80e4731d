"""DDS sampling: DDS's eta convention, the slerp start (D3IP Eq. 16), the CG data consistency hook and the chain."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffens_auto.diffusion import (DDIMSampler, DDPMSampler, DDSDataConsistency, NoiseSchedule, dds_sample, dds_start,
                                    gaussian_noise, sample, sampler_from_plans, slice_correlated_noise)
from diffens_auto.operators import KSpaceUndersampling

SCHEDULE = NoiseSchedule.linear(1000, 1e-4, 0.02)
SHAPE = (1, 1, 12, 10, 6)          # slices along Z (slice axis 2), each undersampled in (X, Y)


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def conjugate_symmetric(mask: torch.Tensor) -> torch.Tensor:
    """The mask OR its point reflection k -> -k of the centred FFT, so that A^H A maps real images to real ones."""
    reflected = mask
    for dim, n in enumerate(mask.shape):
        reflected = reflected.index_select(dim, (2 * (n // 2) - torch.arange(n)) % n)   # -k when DC is at n // 2
    return mask | reflected


def random_mask(shape=SHAPE[2:4], seed=0, symmetric=True) -> torch.Tensor:
    """A random 0/1 (X, Y, 1) mask of about a third of the in-plane k-space, its DC sampled."""
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.2
    mask[shape[0] // 2, shape[1] // 2] = True
    return (conjugate_symmetric(mask) if symmetric else mask)[..., None]


def phantom(dtype=torch.float32) -> torch.Tensor:
    """A real, non-negative volume in [0, 1]: two overlapping ellipsoids of different intensity."""
    axes = [torch.linspace(-1, 1, n, dtype=torch.float64) for n in SHAPE[2:]]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    volume = 0.6 * ((x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.9) ** 2 < 1) + 0.4 * ((x - 0.2) ** 2 + y ** 2 < 0.1)
    return volume.to(dtype)[None, None]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def oracle_for(x_true: torch.Tensor):
    """The exact noise of the ground truth: eps = (y_t - sqrt(abar_t) x_true) / sqrt(1 - abar_t)."""
    def denoiser(y_t, condition, t):
        abar = float(SCHEDULE.alpha_bar[t])
        return (y_t - abar ** 0.5 * x_true) / (1 - abar) ** 0.5
    return denoiser


# ------------------------------------------------------------------------------------------ DDS's eta convention


def independent_alpha_bar():
    """The linear schedule's alpha_bar recomputed here (DDPM Eq. 4), not read from NoiseSchedule."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


@pytest.mark.parametrize("eta", [0.0, 0.5, 0.85, 1.0])
def test_dds_eta_step_is_the_formula_by_hand_with_injected_noise(eta):
    sampler = DDIMSampler(SCHEDULE, 50, eta=eta, eta_convention="dds")
    abar = independent_alpha_bar()
    y_t, eps, z = (randn(*SHAPE, seed=s, dtype=torch.float64) for s in (1, 2, 3))
    for t in [980, 500, 20, 0]:
        a, a_prev = abar[t], (abar[t - 20] if t else 1.0)
        x0 = (y_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        by_hand = math.sqrt(a_prev) * x0 + math.sqrt(1 - eta ** 2) * math.sqrt(1 - a_prev) * eps \
            + eta * math.sqrt(1 - a_prev) * z
        y_prev, x0_hat = sampler.step(eps, t, y_t, noise=z)
        assert torch.allclose(x0_hat, x0, rtol=0, atol=1e-10)
        assert torch.allclose(y_prev, by_hand, rtol=0, atol=1e-10), t
        assert sampler.noise_std(t) == pytest.approx(eta * math.sqrt(1 - a_prev), abs=1e-14)
    assert torch.equal(sampler.step(eps, 0, y_t, noise=z)[0], sampler.step(eps, 0, y_t, noise=z)[1])  # last: x0


def test_dds_eta_zero_is_the_default_ddim_step_exactly():
    default, dds = DDIMSampler(SCHEDULE, 50), DDIMSampler(SCHEDULE, 50, eta=0.0, eta_convention="dds")
    y_t, eps = randn(*SHAPE, seed=4), randn(*SHAPE, seed=5)
    for t in default.timesteps.tolist():
        assert dds.noise_std(t) == default.noise_std(t) == 0.0
        assert all(torch.equal(a, b) for a, b in zip(dds.step(eps, t, y_t), default.step(eps, t, y_t)))
    torch.manual_seed(7)
    conv = nn.Conv3d(1, 1, 3, padding=1)
    denoiser = lambda y, condition, t: SCHEDULE.eps_from_x0(y, torch.tanh(conv(y)), t)  # noqa: E731
    assert torch.equal(sample(denoiser, dds, SHAPE, seed=0), sample(denoiser, default, SHAPE, seed=0))


def test_eta_convention_is_checked_read_from_the_plans_and_absent_by_default():
    plans = {"sampler": "ddim", "eta": 0.85, "num_inference_steps": 50}
    default = sampler_from_plans(plans)
    assert default.eta_convention == "ddim" and "eta_convention" not in repr(default)
    dds = sampler_from_plans({**plans, "eta_convention": "dds"})
    assert dds.eta_convention == "dds" and "eta_convention='dds'" in repr(dds)
    assert dds.timesteps.tolist() == list(range(980, -1, -20))         # DDS's own 50 steps from t' = 980
    with pytest.raises(ValueError, match="ddim, dds"):
        DDIMSampler(SCHEDULE, 10, eta_convention="ddpm")
    with pytest.raises(ValueError, match=r"eta in \[0, 1\]"):
        DDIMSampler(SCHEDULE, 10, eta=1.5, eta_convention="dds")
    assert DDIMSampler(SCHEDULE, 10, eta=1.5).eta == 1.5               # the default convention still allows it


# ------------------------------------------------------------------------------------------ the start (Eq. 16)


def test_slice_noise_ends_are_the_two_draws_exactly():
    shape = (2, 1, 5, 4, 7)
    for axis in (0, 1, 2):
        noise = slice_correlated_noise(shape, axis, torch.Generator().manual_seed(3))
        generator = torch.Generator().manual_seed(3)
        one_slice = [1 if d == 2 + axis else n for d, n in enumerate(shape)]
        first, last = gaussian_noise(one_slice, generator, "cpu", torch.float32), gaussian_noise(
            one_slice, generator, "cpu", torch.float32)
        assert noise.shape == shape
        assert torch.equal(noise.narrow(2 + axis, 0, 1), first)
        assert torch.equal(noise.narrow(2 + axis, shape[2 + axis] - 1, 1), last)


def test_slice_noise_has_unit_variance_per_voxel_and_correlated_neighbours():
    count = 7
    noise = slice_correlated_noise((2000, 1, 6, 6, count), 2, torch.Generator().manual_seed(0)).double()
    per_voxel = noise.var(dim=0)                                       # (1, 6, 6, count), 2000 draws each
    # each estimate has a standard error of sqrt(2 / 2000) = 0.032: the mean over 36 voxels is within 0.02
    assert float((per_voxel.mean(dim=(0, 1, 2)) - 1).abs().max()) < 0.03
    assert float((per_voxel - 1).abs().max()) < 0.16                   # 5 standard errors
    assert float(noise.mean().abs()) < 0.01
    flat = noise.movedim(-1, 0).reshape(count, -1)
    corr = torch.corrcoef(flat)
    # slerp of two independent draws (angle about pi / 2): slices i, j correlate by cos(pi / 2 * |tau_i - tau_j|)
    expected = torch.cos(math.pi / 2 * (torch.arange(count)[:, None] - torch.arange(count)) / (count - 1)).double()
    assert float((corr - expected).abs().max()) < 0.03
    assert float(corr[0, 1]) > 0.95 and abs(float(corr[0, -1])) < 0.03


def test_dds_start_is_eq16_and_seeded():
    zero_filled = phantom()
    start = dds_start(zero_filled, SCHEDULE, 980, slice_axis=2, generator=torch.Generator().manual_seed(1))
    noise = slice_correlated_noise(SHAPE, 2, torch.Generator().manual_seed(1))
    abar = independent_alpha_bar()[980]
    assert torch.allclose(start, math.sqrt(abar) * zero_filled + math.sqrt(1 - abar) * noise, rtol=0, atol=1e-6)
    again = dds_start(zero_filled, SCHEDULE, 980, slice_axis=2, generator=torch.Generator().manual_seed(1))
    other = dds_start(zero_filled, SCHEDULE, 980, slice_axis=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(start, again) and not torch.equal(start, other)
    with pytest.raises(ValueError, match="real"):
        dds_start(zero_filled.to(torch.complex64), SCHEDULE, 980, slice_axis=2, generator=None)
    with pytest.raises(ValueError, match="slice_axis"):
        dds_start(zero_filled, SCHEDULE, 980, slice_axis=3, generator=None)
    with pytest.raises(ValueError, match="volumes"):
        dds_start(zero_filled[0], SCHEDULE, 980, slice_axis=2, generator=None)


# ------------------------------------------------------------------------------------------ the data consistency


def test_large_gamma_reproduces_hard_data_consistency():
    operator = KSpaceUndersampling(random_mask(), dims=(-3, -2))
    x_true = phantom(torch.float64)
    y = operator.A(x_true)
    x0 = x_true + 0.3 * randn(*SHAPE, seed=8, dtype=torch.float64)
    hard = operator.project(x0, y)
    # the mask is conjugate-symmetric, so the hard projection of a real image is real
    assert float(hard.imag.abs().max()) < 1e-12
    soft = DDSDataConsistency(operator, y, gamma=1e6, cg_steps=20)(x0, 500)
    assert soft.dtype == torch.float64 and relative_error(soft, hard.real) < 1e-5
    # a complex estimate and any mask: the complex system has the same limit
    operator = KSpaceUndersampling(random_mask(seed=1, symmetric=False), dims=(-3, -2))
    x0 = x0 + 1j * randn(*SHAPE, seed=9, dtype=torch.float64)
    soft = DDSDataConsistency(operator, y, gamma=1e6, cg_steps=20)(x0, 500)
    assert relative_error(soft, operator.project(x0, y)) < 1e-5


def test_hook_clips_before_the_solve_and_checks_its_arguments():
    operator = KSpaceUndersampling(random_mask(), dims=(-3, -2))
    x0 = 2 * randn(*SHAPE, seed=10)
    y = operator.A(phantom())
    # gamma = 0: the system is x = x0, so the result is the clipped estimate itself
    assert torch.equal(DDSDataConsistency(operator, y, gamma=0.0, clip=(0.0, 1.2))(x0, 0), x0.clamp(0.0, 1.2))
    clipped = DDSDataConsistency(operator, y, clip=(0.0, 1.2))(x0, 0)
    assert torch.allclose(clipped, operator.cg_data_consistency(x0.clamp(0.0, 1.2), y, 5.0, 5))
    with pytest.raises(TypeError, match="cg_data_consistency"):
        DDSDataConsistency(object(), y)
    with pytest.raises(ValueError, match="low < high"):
        DDSDataConsistency(operator, y, clip=(1.0, 0.0))


# ------------------------------------------------------------------------------------------ the chain


SAMPLERS = {
    "ddim_dds_eta085": lambda: DDIMSampler(SCHEDULE, 50, eta=0.85, eta_convention="dds"),
    "ddpm_from_980": lambda: DDPMSampler(SCHEDULE, 50, start_timestep=980),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_noise_oracle_reconstructs_the_ground_truth(name):
    """The oracle's Tweedie estimate is x_true at every step and x_true solves Eq. 28 when y = A x_true, so the
    chain can only lose float32 rounding (measured: below 1e-7 relative); 1e-5 leaves room for other BLAS/FFT
    rounding and is still 5 orders of magnitude below the zero-filled image's error."""
    sampler = SAMPLERS[name]()
    assert int(sampler.timesteps[0]) == 980
    operator = KSpaceUndersampling(random_mask(), dims=(-3, -2))
    x_true = phantom()
    y = operator.A(x_true)
    zero_filled = operator.pinv(y).real
    assert relative_error(zero_filled, x_true) > 0.05                 # the measurement alone is far from it
    result = dds_sample(oracle_for(x_true), sampler, operator, y, zero_filled, slice_axis=2, clip=(-0.5, 1.5),
                        seed=0)
    assert result.shape == SHAPE and result.dtype == torch.float32
    assert relative_error(result, x_true) < 1e-5


def test_the_last_step_returns_the_data_consistent_estimate():
    """A denoiser whose x0 is 0 ends at (gamma A^H A + I)^-1 gamma A^H y: 5/6 of the zero-filled image (P^2 = P)."""
    operator = KSpaceUndersampling(random_mask(), dims=(-3, -2))
    y = operator.A(phantom())
    zero_filled = operator.pinv(y).real

    def zero_x0(y_t, condition, t):
        return y_t / (1 - float(SCHEDULE.alpha_bar[t])) ** 0.5

    result = dds_sample(zero_x0, SAMPLERS["ddim_dds_eta085"](), operator, y, zero_filled, slice_axis=2, seed=0)
    assert relative_error(result, 5 / 6 * zero_filled) < 1e-5


def test_dds_sample_is_deterministic_by_seed():
    operator = KSpaceUndersampling(random_mask(), dims=(-3, -2))
    y = operator.A(phantom())
    zero_filled = operator.pinv(y).real
    torch.manual_seed(11)
    conv = nn.Conv3d(1, 1, 3, padding=1)
    denoiser = lambda y_t, condition, t: SCHEDULE.eps_from_x0(y_t, torch.tanh(conv(y_t)), t)  # noqa: E731
    sampler = DDIMSampler(SCHEDULE, 10, eta=0.85, eta_convention="dds")

    def run(**seeding):
        return dds_sample(denoiser, sampler, operator, y, zero_filled, slice_axis=2, **seeding)

    first = run(seed=3)
    assert torch.equal(first, run(seed=3)) and torch.equal(first, run(generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, run(seed=4))
    with pytest.raises(ValueError, match="not both"):
        run(seed=3, generator=torch.Generator())
