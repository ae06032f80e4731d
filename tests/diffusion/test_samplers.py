"""DDIM and respaced DDPM samplers: timesteps, single steps and whole trajectories against references."""
import math

import diffusers
import pytest
import torch
from torch import nn

from diffens_auto.diffusion import (DEFAULT_CLIP_X0, DDIMSampler, DDPMSampler, NoiseSchedule, clip_value,
                                    respaced_timesteps, sampler_from_plans, space_timesteps)

SCHEDULE = NoiseSchedule.linear(1000, 1e-4, 0.02)
SHAPE = (2, 1, 6, 5, 4)

# guided-diffusion space_timesteps(1000, "50"), ascending
GUIDED_50_OF_1000 = [0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347, 367, 387,
                     408, 428, 449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693, 714, 734, 754, 775,
                     795, 816, 836, 856, 877, 897, 917, 938, 958, 979, 999]


def diffusers_ddim(spacing: str, num_steps: int = 50, **overrides):
    config = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing)
    config.update(overrides)
    scheduler = diffusers.DDIMScheduler(**config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------ timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 7, 10, 33, 50, 64, 1000])
def test_timesteps_identical_to_diffusers(spacing, num_steps):
    reference = diffusers_ddim(spacing, num_steps).timesteps
    ours = DDIMSampler(SCHEDULE, num_steps, timestep_spacing=spacing).timesteps
    assert ours.dtype == torch.long
    assert torch.equal(ours, reference)


def test_known_spacings_of_50_of_1000():
    assert respaced_timesteps(1000, 50, "leading").tolist() == list(range(980, -1, -20))
    assert respaced_timesteps(1000, 50, "trailing").tolist() == list(range(999, 0, -20))
    assert respaced_timesteps(1000, 50, "guided").tolist() == GUIDED_50_OF_1000[::-1]
    assert DDPMSampler(SCHEDULE, 50).timesteps.tolist() == GUIDED_50_OF_1000[::-1]


def test_guided_diffusion_space_timesteps():
    assert space_timesteps(1000, "50") == GUIDED_50_OF_1000
    assert space_timesteps(1000, [10]) == list(range(0, 1000, 111))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "1000") == list(range(1000))
    sections = space_timesteps(300, "10,15,20")      # guided-diffusion's docstring example
    assert len(sections) == 45
    for low, high, count in ((0, 99, 10), (100, 199, 15), (200, 299, 20)):
        inside = [s for s in sections if low <= s <= high]
        assert len(inside) == count and inside[0] == low and inside[-1] == high
    with pytest.raises(ValueError):
        space_timesteps(100, "ddim33")
    with pytest.raises(ValueError):
        space_timesteps(10, "20")


def test_previous_timestep_is_the_next_visited_step():
    for sampler in (DDIMSampler(SCHEDULE, 50, timestep_spacing="trailing"), DDPMSampler(SCHEDULE, 50)):
        visited = sampler.timesteps.tolist()
        for t, following in zip(visited, visited[1:] + [-1]):
            assert sampler.previous_timestep(t) == following
            assert sampler.previous_timestep(torch.tensor(t)) == following
        a, a_prev = sampler.alpha_bars(visited[-1])
        assert a_prev == 1.0 and a == float(SCHEDULE.alpha_bar[visited[-1]])
        with pytest.raises(ValueError):
            sampler.previous_timestep(visited[0] - 1)


def test_invalid_sampler_arguments():
    with pytest.raises(ValueError, match="leading, trailing, linspace, guided"):
        DDIMSampler(SCHEDULE, 50, timestep_spacing="uniform")
    with pytest.raises(ValueError):
        DDIMSampler(SCHEDULE, 1001)
    with pytest.raises(ValueError):
        DDIMSampler(SCHEDULE, 10, eta=-1)
    with pytest.raises(ValueError):
        DDIMSampler(SCHEDULE, 10, clip_x0=0)
    with pytest.raises(ValueError, match="fixed_small, fixed_large"):
        DDPMSampler(SCHEDULE, 10, variance="learned")


# ------------------------------------------------------------------------------------------ DDIM vs diffusers


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_single_steps_match_diffusers(spacing, eta):
    reference = diffusers_ddim(spacing)
    ours = DDIMSampler(SCHEDULE, 50, eta=eta, timestep_spacing=spacing)
    for i, t in enumerate(ours.timesteps.tolist()):
        y_t, eps, noise = randn(*SHAPE, seed=3 * i), randn(*SHAPE, seed=3 * i + 1), randn(*SHAPE, seed=3 * i + 2)
        y_prev, x0_hat = ours.step(eps, t, y_t, noise=noise)
        expected = reference.step(eps, t, y_t, eta=eta, variance_noise=noise if eta > 0 else None)
        scale = max(1.0, float(expected.prev_sample.abs().max()))
        assert float((y_prev - expected.prev_sample).abs().max()) <= 1e-4 * scale, t
        x0_scale = max(1.0, float(expected.pred_original_sample.abs().max()))
        assert float((x0_hat - expected.pred_original_sample).abs().max()) <= 1e-4 * x0_scale, t


def fixed_eps_function():
    """A fixed, non-trivial eps(y, t): the noise that would make tanh(seeded 3D conv of y) the clean volume.

    Predicting x0 = tanh(conv(y)) keeps the trajectory in a realistic range (|y| of order 1), so an absolute
    tolerance on it means something; a raw eps = tanh(conv(y)) would let x0 = (y - sqrt(1 - a) eps) / sqrt(a)
    grow to hundreds.
    """
    torch.manual_seed(1234)
    conv = nn.Conv3d(1, 1, 3, padding=1)
    for p in conv.parameters():
        p.requires_grad_(False)
    return lambda y, t: SCHEDULE.eps_from_x0(y, torch.tanh(2 * conv(y)), t)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_whole_trajectory_matches_diffusers(spacing, eta):
    reference = diffusers_ddim(spacing)
    ours = DDIMSampler(SCHEDULE, 50, eta=eta, timestep_spacing=spacing)
    eps_fn = fixed_eps_function()
    y_ours = y_ref = randn(*SHAPE, seed=99)
    worst = 0.0
    for i, t in enumerate(ours.timesteps.tolist()):
        noise = randn(*SHAPE, seed=1000 + i)
        y_ours, _ = ours.step(eps_fn(y_ours, t), t, y_ours, noise=noise)
        y_ref = reference.step(eps_fn(y_ref, t), t, y_ref, eta=eta,
                               variance_noise=noise if eta > 0 else None).prev_sample
        worst = max(worst, float((y_ours - y_ref).abs().max()))
    assert worst <= 1e-3
    assert 0.1 < float(y_ours.abs().max()) <= 1.0   # a clean volume in tanh's range


@pytest.mark.parametrize("recompute_eps", [False, True])
def test_ddim_clipping_matches_diffusers_clip_sample(recompute_eps):
    reference = diffusers_ddim("leading", clip_sample=True, clip_sample_range=1.5)
    ours = DDIMSampler(SCHEDULE, 50, eta=0.5, clip_x0=1.5, recompute_eps=recompute_eps)
    for i, t in enumerate(ours.timesteps.tolist()):
        y_t, eps, noise = randn(*SHAPE, seed=7 * i), randn(*SHAPE, seed=7 * i + 1), randn(*SHAPE, seed=7 * i + 2)
        y_prev, x0_hat = ours.step(eps, t, y_t, noise=noise)
        expected = reference.step(eps, t, y_t, eta=0.5, variance_noise=noise,
                                  use_clipped_model_output=recompute_eps)
        assert float(x0_hat.abs().max()) <= 1.5
        scale = max(1.0, float(expected.prev_sample.abs().max()))
        assert float((y_prev - expected.prev_sample).abs().max()) <= 1e-4 * scale, t


def test_ddim_sigma_is_eq16_and_last_step_returns_x0():
    ddim = DDIMSampler(SCHEDULE, 10, eta=0.7)
    t, prev = 900, 800
    a, a_prev = float(SCHEDULE.alpha_bar[t]), float(SCHEDULE.alpha_bar[prev])
    expected = 0.7 * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    assert ddim.noise_std(t) == pytest.approx(expected, rel=1e-12)
    assert ddim.noise_std(0) == 0.0                                    # alpha_bar_prev = 1: no noise
    y_t, eps = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    y_prev, x0_hat = ddim.step(eps, 0, y_t)
    assert torch.equal(y_prev, x0_hat)


def test_ddim_eta0_draws_no_noise_and_injected_noise_is_used():
    ddim = DDIMSampler(SCHEDULE, 10)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    y_t, eps = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    ddim.step(eps, 900, y_t, generator=g)
    assert torch.equal(g.get_state(), state)
    stochastic = DDIMSampler(SCHEDULE, 10, eta=1.0)
    noise = randn(*SHAPE, seed=3)
    a, _ = stochastic.step(eps, 900, y_t, noise=noise)
    b, _ = stochastic.step(eps, 900, y_t, generator=torch.Generator().manual_seed(3))
    c, _ = stochastic.step(eps, 900, y_t, noise=noise + 1)
    assert torch.equal(a, b)                                           # generator draws the same tensor on CPU
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError):
        stochastic.step(eps, 900, y_t, noise=noise[:1])


def test_drawn_noise_comes_from_the_generators_device():
    """A CPU generator with data elsewhere: the noise is drawn on the CPU and moved (one sample on any device)."""
    stochastic = DDPMSampler(SCHEDULE, 10)
    y_t, eps = randn(*SHAPE, seed=1, dtype=torch.float64), randn(*SHAPE, seed=2, dtype=torch.float64)
    expected, _ = stochastic.step(eps, 888, y_t, noise=randn(*SHAPE, seed=4, dtype=torch.float64))
    drawn, _ = stochastic.step(eps, 888, y_t, generator=torch.Generator().manual_seed(4))
    assert torch.equal(drawn, expected)                                  # drawn in y_t's dtype (float64)
    assert drawn.dtype == torch.float64
    if torch.cuda.is_available():
        on_gpu, _ = stochastic.step(eps.cuda(), 888, y_t.cuda(), generator=torch.Generator().manual_seed(4))
        assert on_gpu.is_cuda
        torch.testing.assert_close(on_gpu.cpu(), drawn, rtol=0, atol=1e-12)


def test_step_from_x0_uses_the_given_x0():
    """A projected x0 enters the update: with the network's eps (default) or with eps recomputed from it."""
    y_t, eps = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    t = 500
    for recompute in (False, True):
        ddim = DDIMSampler(SCHEDULE, 10, recompute_eps=recompute, timestep_spacing="linspace")
        t = ddim.timesteps[3].item()
        a, a_prev = ddim.alpha_bars(t)
        x0 = ddim.predict_x0(eps, t, y_t)
        projected = x0 - x0.mean() + 0.25
        y_prev, returned = ddim.step_from_x0(projected, eps, t, y_t)
        assert torch.equal(returned, projected)
        eps_dir = SCHEDULE.eps_from_x0(y_t, projected, t) if recompute else eps
        torch.testing.assert_close(y_prev, math.sqrt(a_prev) * projected + math.sqrt(1 - a_prev) * eps_dir)
        hooked, _ = ddim.step(eps, t, y_t, x0_hook=lambda x, step: x - x.mean() + 0.25)
        torch.testing.assert_close(hooked, y_prev)
    # without clipping or hook the two eps choices agree up to rounding
    plain = DDIMSampler(SCHEDULE, 50).step(eps, 500, y_t)[0]
    recomputed = DDIMSampler(SCHEDULE, 50, recompute_eps=True).step(eps, 500, y_t)[0]
    torch.testing.assert_close(plain, recomputed, rtol=0, atol=1e-5)


def test_step_accepts_tensor_timesteps_for_the_whole_batch():
    ddim = DDIMSampler(SCHEDULE, 50)
    y_t, eps = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    expected = ddim.step(eps, 480, y_t)[0]
    assert torch.equal(ddim.step(eps, torch.tensor(480), y_t)[0], expected)
    assert torch.equal(ddim.step(eps, torch.tensor([480, 480]), y_t)[0], expected)
    with pytest.raises(ValueError):
        ddim.step(eps, torch.tensor([480, 460]), y_t)


# ------------------------------------------------------------------------------------------ respaced DDPM


def plain_ddpm_step(eps, t, y_t, noise, variance):
    """DDPM Eq. 11 with sigma^2 = beta_t (fixed_large) or the posterior variance beta-tilde_t (fixed_small)."""
    beta, alpha, abar = (float(v[t]) for v in (SCHEDULE.betas, SCHEDULE.alphas, SCHEDULE.alpha_bar))
    abar_prev = float(SCHEDULE.alpha_bar[t - 1]) if t > 0 else 1.0
    mean = (y_t - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
    sigma2 = beta if variance == "fixed_large" else beta * (1 - abar_prev) / (1 - abar)
    return mean + (math.sqrt(sigma2) * noise if t > 0 else 0)


@pytest.mark.parametrize("spacing", ["guided", "leading", "trailing", "linspace"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_with_all_steps_is_plain_ancestral_ddpm(spacing, variance):
    ddpm = DDPMSampler(SCHEDULE, 1000, timestep_spacing=spacing, variance=variance)
    assert ddpm.timesteps.tolist() == list(range(999, -1, -1))
    torch.testing.assert_close(ddpm.betas, SCHEDULE.betas, rtol=1e-9, atol=1e-13)
    for t in (999, 998, 600, 50, 1, 0):
        y_t, eps, noise = (randn(*SHAPE, seed=t + k, dtype=torch.float64) for k in (0, 1, 2))
        y_prev, _ = ddpm.step(eps, t, y_t, noise=noise)
        torch.testing.assert_close(y_prev, plain_ddpm_step(eps, t, y_t, noise, variance), rtol=0, atol=1e-9)


def test_respaced_betas_reproduce_the_kept_alpha_bar():
    ddpm = DDPMSampler(SCHEDULE, 50)
    kept = torch.tensor(GUIDED_50_OF_1000)
    assert torch.equal(ddpm.kept_timesteps, kept)
    torch.testing.assert_close(torch.cumprod(1 - ddpm.betas, 0), SCHEDULE.alpha_bar[kept], rtol=1e-12, atol=0)
    assert float(ddpm.betas[0]) == pytest.approx(float(SCHEDULE.betas[0]))
    # guided-diffusion: large variance = beta', small = beta' (1 - abar_prev) / (1 - abar) <= beta'
    assert bool((ddpm.posterior_variance[1:] < ddpm.betas[1:]).all())


def test_ddpm_fixed_small_equals_ddim_eta1_with_eps_from_x0():
    """The posterior of the respaced chain is DDIM with eta = 1 (DDIM Eq. 16), when eps is the one x0 implies."""
    ddpm = DDPMSampler(SCHEDULE, 20, timestep_spacing="guided", clip_x0=1.0)
    ddim = DDIMSampler(SCHEDULE, 20, eta=1.0, timestep_spacing="guided", clip_x0=1.0, recompute_eps=True)
    for i, t in enumerate(ddpm.timesteps.tolist()):
        y_t, eps, noise = (randn(*SHAPE, seed=10 * i + k, dtype=torch.float64) for k in (0, 1, 2))
        assert ddpm.noise_std(t) == pytest.approx(ddim.noise_std(t), rel=1e-9, abs=1e-15)
        a, b = ddpm.step(eps, t, y_t, noise=noise), ddim.step(eps, t, y_t, noise=noise)
        torch.testing.assert_close(a[1], b[1])
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-9)


def test_ddpm_last_step_returns_x0_and_is_noise_free():
    ddpm = DDPMSampler(SCHEDULE, 10, variance="fixed_large")
    assert ddpm.noise_std(0) == 0.0 and ddpm.noise_std(111) > 0
    y_t, eps = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    y_prev, x0_hat = ddpm.step(eps, 0, y_t, noise=randn(*SHAPE, seed=3))
    torch.testing.assert_close(y_prev, x0_hat, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ from the plans


def test_sampler_from_plans():
    plans = {"num_train_steps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
             "sampler": "ddim", "eta": 0.0, "num_inference_steps": 50, "timestep_spacing": "leading",
             "clip_x0": True, "consistency_projection": True}
    ddim = sampler_from_plans(plans)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.0 and ddim.clip_x0 == DEFAULT_CLIP_X0
    assert ddim.timesteps.tolist() == list(range(980, -1, -20))
    assert sampler_from_plans(plans, num_steps=10).num_steps == 10
    ddpm = sampler_from_plans({**plans, "sampler": "ddpm", "clip_x0": False})
    assert isinstance(ddpm, DDPMSampler) and ddpm.clip_x0 is None and ddpm.variance == "fixed_small"
    # DDPM ignores DDIM's "timestep_spacing" ("leading" in every plan): guided-diffusion respacing by default
    assert ddpm.timestep_spacing == "guided" and ddpm.timesteps.tolist() == GUIDED_50_OF_1000[::-1]
    trailing = sampler_from_plans({**plans, "sampler": "ddpm", "ddpm_timestep_spacing": "trailing"})
    assert trailing.timesteps.tolist() == list(range(999, 0, -20))
    with pytest.raises(ValueError, match="ddim, ddpm"):
        sampler_from_plans({**plans, "sampler": "euler"})
    assert clip_value(True) == DEFAULT_CLIP_X0 and clip_value(False) is None and clip_value(None) is None
    assert clip_value(3) == 3.0
