"""The public API that other stages, users' scripts and outside checks rely on, exactly as issue 3 (item 8) writes it:

    from diffens_auto.diffusion import NoiseSchedule, DDIMSampler
    NoiseSchedule.linear(num_train_steps=1000, beta_start=1e-4, beta_end=0.02)   # exposes alpha_bar as a tensor
    DDIMSampler(schedule, num_steps, eta, timestep_spacing)                      # .timesteps
    .step(eps, t, y_t, noise=None) -> (y_prev, x0_hat)
    from diffens_auto.operators import AvgPoolSR
    AvgPoolSR(factor=(4, 4, 4))                # A, AT, pinv, project(x0_hat, x) on (batch, channel, X, Y, Z)
"""
import torch

from diffens_auto.diffusion import DDIMSampler, NoiseSchedule
from diffens_auto.operators import AvgPoolSR


def test_noise_schedule_linear_exposes_alpha_bar_as_a_tensor():
    schedule = NoiseSchedule.linear(num_train_steps=1000, beta_start=1e-4, beta_end=0.02)
    assert isinstance(schedule.alpha_bar, torch.Tensor)
    assert schedule.alpha_bar.shape == (1000,)
    assert abs(float(schedule.alpha_bar[0]) - (1 - 1e-4)) <= 1e-12


def test_ddim_sampler_timesteps_and_step():
    schedule = NoiseSchedule.linear(num_train_steps=1000, beta_start=1e-4, beta_end=0.02)
    sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, timestep_spacing="leading")
    assert isinstance(sampler.timesteps, torch.Tensor)
    assert sampler.timesteps.tolist() == list(range(980, -1, -20))
    y_t, eps = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8, 8)
    t = int(sampler.timesteps[0])
    y_prev, x0_hat = sampler.step(eps, t, y_t, noise=None)
    assert y_prev.shape == x0_hat.shape == y_t.shape
    y_prev_default, _ = sampler.step(eps, t, y_t)
    assert torch.equal(y_prev, y_prev_default)
    stochastic = DDIMSampler(schedule, 50, 1.0, "trailing")      # positional: (schedule, num_steps, eta, spacing)
    noisy, _ = stochastic.step(eps, int(stochastic.timesteps[0]), y_t, noise=torch.randn(1, 1, 8, 8, 8))
    assert noisy.shape == y_t.shape


def test_avgpool_sr_operator_methods_on_batch_channel_volumes():
    operator = AvgPoolSR(factor=(4, 4, 4))
    x0_hat = torch.randn(2, 1, 16, 16, 12)           # (batch, channel, X, Y, Z)
    x = operator.A(torch.randn(2, 1, 16, 16, 12))
    assert operator.A(x0_hat).shape == x.shape == (2, 1, 4, 4, 3)
    assert operator.AT(x).shape == operator.pinv(x).shape == x0_hat.shape
    projected = operator.project(x0_hat, x)
    assert projected.shape == x0_hat.shape
    assert (operator.A(projected) - x).abs().max() <= 1e-5
