"""NoiseSchedule: the beta schedules, alpha_bar, forward noising and its inverses (Tweedie x0, eps from x0)."""
import math

import diffusers
import numpy as np
import pytest
import torch

from diffens_auto.diffusion import NoiseSchedule


def test_public_api_linear_schedule_exposes_alpha_bar_tensor():
    schedule = NoiseSchedule.linear(num_train_steps=1000, beta_start=1e-4, beta_end=0.02)
    assert isinstance(schedule.alpha_bar, torch.Tensor)
    assert schedule.num_train_steps == 1000
    assert schedule.betas.shape == schedule.alphas.shape == schedule.alpha_bar.shape == (1000,)
    assert schedule.alpha_bar.dtype == torch.float64


def test_linear_betas_are_ddpm_linspace_and_alpha_bar_their_cumulative_product():
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    np.testing.assert_allclose(schedule.betas.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=0, atol=1e-15)
    np.testing.assert_allclose(schedule.alphas.numpy(), 1 - np.linspace(1e-4, 0.02, 1000), atol=1e-15)
    np.testing.assert_allclose(schedule.alpha_bar.numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)
    assert float(schedule.alpha_bar[0]) == pytest.approx(1 - 1e-4)      # index 0 is one step of noise, not none


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(), NoiseSchedule.linear(200, 1e-3, 0.05),
                                      NoiseSchedule.cosine(1000), NoiseSchedule.cosine(50)])
def test_alpha_bar_strictly_decreasing_in_unit_interval(schedule):
    abar = schedule.alpha_bar
    assert bool((abar[1:] < abar[:-1]).all())
    assert bool(((abar > 0) & (abar < 1)).all())


def test_cosine_schedule_follows_improved_ddpm():
    schedule = NoiseSchedule.cosine(1000, s=0.008, max_beta=0.999)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2      # Improved DDPM Eq. 17
    for t in (0, 10, 500, 900):
        assert float(schedule.alpha_bar[t]) == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert float(schedule.betas.max()) <= 0.999
    assert float(schedule.betas[-1]) == pytest.approx(0.999)             # the cap is active at the very end
    assert float(schedule.alpha_bar[0]) > 0.9999                        # almost no noise at the start
    assert float(schedule.alpha_bar[499]) == pytest.approx(0.5, abs=0.02)
    assert bool((schedule.betas[1:] >= schedule.betas[:-1]).all())


def test_cosine_matches_diffusers_squaredcos_cap_v2():
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = NoiseSchedule.cosine(1000)
    torch.testing.assert_close(ours.betas.float(), reference.betas, rtol=1e-5, atol=1e-7)


def test_from_plans():
    plans = {"num_train_steps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
             "sampler": "ddim", "eta": 0.0, "num_inference_steps": 50, "timestep_spacing": "leading",
             "clip_x0": True, "consistency_projection": True}
    torch.testing.assert_close(NoiseSchedule.from_plans(plans).alpha_bar, NoiseSchedule.linear().alpha_bar)
    small = NoiseSchedule.from_plans({**plans, "num_train_steps": 100, "beta_end": 0.05})
    assert small.num_train_steps == 100 and float(small.betas[-1]) == pytest.approx(0.05)
    cosine = NoiseSchedule.from_plans({"beta_schedule": "cosine", "num_train_steps": 300})
    torch.testing.assert_close(cosine.alpha_bar, NoiseSchedule.cosine(300).alpha_bar)
    with pytest.raises(ValueError, match="linear, cosine"):
        NoiseSchedule.from_plans({**plans, "beta_schedule": "quadratic"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 1, 8, 9, 7), (3, 2, 6, 5)])
def test_q_sample_tweedie_and_eps_from_x0_invert_each_other(dtype, shape):
    schedule = NoiseSchedule.linear()
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(shape, generator=g, dtype=dtype)
    noise = torch.randn(shape, generator=g, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for t in (0, 1, 500, 999, torch.tensor(250), torch.tensor([0, 999, 400][: shape[0]])):
        y_t = schedule.q_sample(y0, t, noise)
        assert y_t.dtype == dtype and y_t.shape == shape
        torch.testing.assert_close(schedule.tweedie_x0(y_t, noise, t), y0, rtol=0, atol=tol * 100)
        torch.testing.assert_close(schedule.eps_from_x0(y_t, y0, t), noise, rtol=0, atol=tol * 100)
    # per-sample timesteps: each batch element uses its own alpha_bar (DDPM Eq. 4)
    t = torch.tensor([3, 700][: shape[0]] + [10] * max(0, shape[0] - 2))
    y_t = schedule.q_sample(y0, t, noise)
    for b in range(shape[0]):
        abar = float(schedule.alpha_bar[int(t[b])])
        expected = math.sqrt(abar) * y0[b] + math.sqrt(1 - abar) * noise[b]
        torch.testing.assert_close(y_t[b], expected, rtol=0, atol=tol)


def test_tweedie_is_exact_at_every_step_in_float64():
    schedule = NoiseSchedule.linear()
    y0 = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(1, 1, 2, 3, 5)
    noise = torch.cos(torch.arange(30, dtype=torch.float64)).reshape(1, 1, 2, 3, 5)
    t = torch.arange(1000)
    y_t = schedule.q_sample(y0.expand(1000, -1, -1, -1, -1), t, noise.expand(1000, -1, -1, -1, -1))
    assert float((schedule.tweedie_x0(y_t, noise, t) - y0).abs().max()) < 1e-10


def test_invalid_inputs_are_refused():
    schedule = NoiseSchedule.linear(100)
    y = torch.zeros(2, 1, 4, 4, 4)
    with pytest.raises(IndexError):
        schedule.q_sample(y, 100, y)
    with pytest.raises(IndexError):
        schedule.tweedie_x0(y, y, torch.tensor([0, -1]))
    with pytest.raises(ValueError):
        schedule.q_sample(y, torch.tensor([1, 2, 3]), y)
    with pytest.raises(ValueError):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError):
        NoiseSchedule(torch.zeros(0))
