"""The sampling loop: the exact-noise oracle recovers its volume, a seed makes it deterministic, x0 hooks hold."""
import numpy as np
import pytest
import torch
from torch import nn

from diffens_auto.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, sample

SCHEDULE = NoiseSchedule.linear(1000, 1e-4, 0.02)
SHAPE = (1, 1, 8, 9, 7)


def oracle_for(y0: torch.Tensor):
    """The exact noise of a single known volume: eps(y_t, t) = (y_t - sqrt(abar_t) y0) / sqrt(1 - abar_t)."""
    def denoiser(y_t, condition, t):
        abar = float(SCHEDULE.alpha_bar[t])
        return (y_t - abar ** 0.5 * y0) / (1 - abar) ** 0.5
    return denoiser


def conv_denoiser():
    """A fixed network-like denoiser: the eps that makes tanh(seeded 3D conv of [y_t, condition]) the clean volume."""
    torch.manual_seed(7)
    conv = nn.Conv3d(2, 1, 3, padding=1)
    return lambda y_t, condition, t: SCHEDULE.eps_from_x0(y_t, torch.tanh(conv(torch.cat([y_t, condition], 1))), t)


SAMPLERS = {
    "ddim_leading": lambda n: DDIMSampler(SCHEDULE, n, eta=0.0, timestep_spacing="leading"),
    "ddim_trailing": lambda n: DDIMSampler(SCHEDULE, n, eta=0.0, timestep_spacing="trailing"),
    "ddim_linspace": lambda n: DDIMSampler(SCHEDULE, n, eta=0.0, timestep_spacing="linspace"),
    "ddim_eta1": lambda n: DDIMSampler(SCHEDULE, n, eta=1.0),
    "ddpm_small": lambda n: DDPMSampler(SCHEDULE, n, variance="fixed_small"),
    "ddpm_large": lambda n: DDPMSampler(SCHEDULE, n, variance="fixed_large"),
    "ddpm_small_leading": lambda n: DDPMSampler(SCHEDULE, n, timestep_spacing="leading"),
}


@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_exact_noise_oracle_returns_its_volume_from_any_start(name, num_steps):
    y0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(42))
    sampler = SAMPLERS[name](num_steps)
    for seed in (0, 1, 2):
        result = sample(oracle_for(y0), sampler, SHAPE, seed=seed)
        assert result.shape == SHAPE and result.dtype == torch.float32
        assert float((result - y0).abs().max()) <= 1e-4, (name, num_steps, seed)
    start = 3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))     # any start, not even N(0, 1)
    assert float((sample(oracle_for(y0), sampler, None, start=start, seed=0) - y0).abs().max()) <= 1e-4


def independent_alpha_bar():
    """The linear schedule's alpha_bar recomputed here (DDPM Eq. 4), not read from NoiseSchedule."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_eta0_oracle_walks_the_forward_marginal_at_every_step(spacing):
    """With the exact oracle, DDIM (eta 0) keeps y on the line through y0 and the start's noise:
    y at every visited step t = sqrt(abar_t) y0 + sqrt(1 - abar_t) eps_start (DDIM Eq. 12 with eps constant)."""
    abar = independent_alpha_bar()
    y0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(42))
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    sampler = DDIMSampler(SCHEDULE, 10, eta=0.0, timestep_spacing=spacing)
    oracle, seen = oracle_for(y0), []

    def recording(y_t, condition, t):
        seen.append((t, y_t.clone()))
        return oracle(y_t, condition, t)

    result = sample(recording, sampler, None, start=start)
    t_start = seen[0][0]
    eps_start = (start - abar[t_start] ** 0.5 * y0) / (1 - abar[t_start]) ** 0.5
    assert [t for t, _ in seen] == sampler.timesteps.tolist() and len(seen) == 10
    for t, y_t in seen[1:]:
        expected = abar[t] ** 0.5 * y0 + (1 - abar[t]) ** 0.5 * eps_start
        assert float((y_t - expected).abs().max()) <= 1e-5, (spacing, t)
    assert float((result - y0).abs().max()) <= 1e-5


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("spacing", ["guided", "leading"])
def test_respaced_ddpm_step_is_the_posterior_of_the_kept_steps(spacing, variance):
    """Every step of respaced DDPM samples q(y_prev | y_t, x0) of the kept-step chain (DDPM Eq. 6-7), with
    beta'_t = 1 - abar_t / abar_prev computed here from the kept alpha_bars."""
    abar = independent_alpha_bar()
    sampler = DDPMSampler(SCHEDULE, 10, timestep_spacing=spacing, variance=variance)
    kept = sampler.timesteps.tolist()
    y0 = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(42))
    oracle = oracle_for(y0)
    for i, t in enumerate(kept):
        y_t = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + i))
        z = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(200 + i))
        a = abar[t]
        a_prev = abar[kept[i + 1]] if i + 1 < len(kept) else 1.0
        beta = 1.0 - a / a_prev
        mean = a_prev ** 0.5 * beta / (1 - a) * y0 + (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a) * y_t   # Eq. 7
        var = beta * (1 - a_prev) / (1 - a) if variance == "fixed_small" else beta
        y_mean, x0_hat = sampler.step(oracle(y_t, None, t), t, y_t, noise=torch.zeros_like(y_t))
        y_prev, _ = sampler.step(oracle(y_t, None, t), t, y_t, noise=z)
        torch.testing.assert_close(x0_hat, y0, rtol=0, atol=1e-9)
        torch.testing.assert_close(y_mean, mean, rtol=0, atol=1e-9)
        expected = mean + (var ** 0.5 * z if i + 1 < len(kept) else 0)   # the last step adds no noise
        torch.testing.assert_close(y_prev, expected, rtol=0, atol=1e-9)
        assert sampler.noise_std(t) == pytest.approx(var ** 0.5 if i + 1 < len(kept) else 0.0, rel=1e-9)


@pytest.mark.parametrize("make", [lambda: DDPMSampler(SCHEDULE, 10), lambda: DDIMSampler(SCHEDULE, 10, eta=1.0),
                                  lambda: DDIMSampler(SCHEDULE, 10, eta=0.0)])
def test_deterministic_under_a_seed(make):
    condition = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    denoiser, sampler = conv_denoiser(), make()
    with torch.no_grad():
        first = sample(denoiser, sampler, SHAPE, condition, seed=11)
        torch.randn(5)                                    # the global generator's state does not matter
        again = sample(denoiser, sampler, SHAPE, condition, seed=11)
        via_generator = sample(denoiser, sampler, SHAPE, condition, generator=torch.Generator().manual_seed(11))
        other = sample(denoiser, sampler, SHAPE, condition, seed=12)
    assert torch.equal(first, again) and torch.equal(first, via_generator)
    assert not torch.allclose(first, other)
    with pytest.raises(ValueError):
        sample(denoiser, sampler, SHAPE, condition, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("make", [lambda: DDIMSampler(SCHEDULE, 10, eta=0.0, clip_x0=2.0),
                                  lambda: DDIMSampler(SCHEDULE, 10, eta=1.0, recompute_eps=True),
                                  lambda: DDPMSampler(SCHEDULE, 10, variance="fixed_large")])
def test_x0_hook_is_called_every_step_and_its_projection_is_respected(make):
    sampler = make()
    condition = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    seen = []

    def force_voxel(x0_hat, t):
        seen.append(t)
        if sampler.clip_x0 is not None:
            assert float(x0_hat.abs().max()) <= sampler.clip_x0      # the hook sees the clipped estimate
        x0_hat = x0_hat.clone()
        x0_hat[0, 0, 1, 2, 3] = 0.7
        return x0_hat

    result = sample(conv_denoiser(), sampler, SHAPE, condition, seed=0, x0_hook=force_voxel)
    assert seen == sampler.timesteps.tolist()
    assert float(result[0, 0, 1, 2, 3]) == pytest.approx(0.7, abs=1e-6)

    # a projection onto {mean = 0.25} (a stand-in for x0 - A^+(A x0 - x)) holds for the final sample
    project = lambda x0_hat, t: x0_hat - x0_hat.mean() + 0.25
    projected = sample(conv_denoiser(), sampler, SHAPE, condition, seed=0, x0_hook=project)
    assert float(projected.mean()) == pytest.approx(0.25, abs=1e-6)


def test_loop_passes_condition_int_timesteps_and_start():
    calls = []
    start = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    condition = {"lowres": torch.zeros(1)}

    def denoiser(y_t, cond, t):
        calls.append((y_t.clone(), cond, t))
        return torch.zeros_like(y_t)

    sampler = DDIMSampler(SCHEDULE, 5, timestep_spacing="trailing")
    result = sample(denoiser, sampler, SHAPE, condition, start=start, progress=True)
    assert [c[2] for c in calls] == sampler.timesteps.tolist()
    assert all(type(c[2]) is int and c[1] is condition for c in calls)
    assert torch.equal(calls[0][0], start)
    assert result.dtype == torch.float64
    # eps = 0 everywhere: the last x0_hat is y_t / sqrt(abar_t) at the last step
    t_last = sampler.timesteps[-1].item()
    torch.testing.assert_close(result, calls[-1][0] / float(SCHEDULE.alpha_bar[t_last]) ** 0.5)


def test_loop_argument_checks_and_dtype():
    denoiser = lambda y, c, t: torch.zeros_like(y)
    sampler = DDIMSampler(SCHEDULE, 3)
    with pytest.raises(ValueError):
        sample(denoiser, sampler, (1, 1, 2, 2, 2), start=torch.zeros(1, 1, 3, 3, 3))
    with pytest.raises(ValueError):
        sample(denoiser, sampler, None)
    assert sample(denoiser, sampler, (2, 1, 3, 4, 5), seed=0, dtype=torch.float64).dtype == torch.float64
    noise = sample(lambda y, c, t: torch.zeros_like(y), sampler, (1, 1, 4, 4, 4), seed=5)
    assert torch.isfinite(noise).all()


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_a_truncated_chain_starts_from_zero_noised_to_its_first_step_and_the_oracle_recovers_y0(kind):
    from diffens_auto.diffusion import sampler_from_plans
    diffusion = {"num_train_steps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                 "sampler": kind, "num_inference_steps": 10, "start_timestep": 299}
    sampler = sampler_from_plans(diffusion, SCHEDULE)
    steps = sampler.timesteps.tolist()
    assert len(steps) == 10 and max(steps) <= 299 and min(steps) == 0
    assert sampler.initial_noise_scale == pytest.approx((1 - float(SCHEDULE.alpha_bar[steps[0]])) ** 0.5)
    seen = []
    y0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    oracle = oracle_for(y0)

    def recording(y_t, condition, t):
        seen.append(y_t.clone())
        return oracle(y_t, condition, t)
    out = sample(recording, sampler, SHAPE, seed=5)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(seen[0], noise * sampler.initial_noise_scale)     # y0 = 0 noised to t'
    torch.testing.assert_close(out, y0, atol=1e-4, rtol=0)
    # the full chain keeps starting from pure noise
    assert sampler_from_plans({**diffusion, "start_timestep": None}, SCHEDULE).initial_noise_scale == 1.0
    with pytest.raises(ValueError, match="start_timestep must be an integer in 0..999"):
        DDIMSampler(SCHEDULE, 10, start_timestep=1000)


def test_a_v_oracle_through_as_eps_denoiser_recovers_its_volume_and_v_inverts():
    from diffens_auto.diffusion.prediction import as_eps_denoiser, training_target
    y0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    for t in (0, 500, 999):
        y_t = SCHEDULE.q_sample(y0, t, noise)
        v = training_target(SCHEDULE, "v", y0, noise, t)
        a = float(SCHEDULE.alpha_bar[t])
        torch.testing.assert_close(v, a ** 0.5 * noise - (1 - a) ** 0.5 * y0)       # Salimans & Ho's velocity
        torch.testing.assert_close(SCHEDULE.eps_from_v(y_t, v, t), noise, atol=1e-5, rtol=0)
    assert training_target(SCHEDULE, "epsilon", y0, noise, 3) is noise
    eps_oracle = oracle_for(y0)

    def v_oracle(y_t, condition, t):
        eps = eps_oracle(y_t, condition, t)
        return SCHEDULE.v_from_noise(SCHEDULE.tweedie_x0(y_t, eps, t), eps, t)
    out = sample(as_eps_denoiser(v_oracle, SCHEDULE, "v"), DDIMSampler(SCHEDULE, 10), SHAPE, seed=0)
    torch.testing.assert_close(out, y0, atol=1e-4, rtol=0)
    assert as_eps_denoiser(eps_oracle, SCHEDULE, "epsilon") is eps_oracle
    with pytest.raises(ValueError, match="Unknown prediction 'x0'"):
        as_eps_denoiser(eps_oracle, SCHEDULE, "x0")
