"""The per-timestep diagnostic: an oracle denoiser scores zero error, the trivial predictor its closed form."""
import math

import torch

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.diagnostic import bucket_timesteps, timestep_errors

SCHEDULE = NoiseSchedule.linear()


def _sample(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    y0 = torch.randn(1, 1, 8, 6, 4, generator=generator, dtype=torch.float64) * 0.3
    noise = torch.randn(y0.shape, generator=generator, dtype=torch.float64)
    return y0, noise


def test_bucket_timesteps_are_the_buckets_middles():
    assert bucket_timesteps(1000, 10) == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert bucket_timesteps(1000, 1) == [500]


def test_an_oracle_denoiser_has_no_error_at_any_timestep():
    y0, noise = _sample()
    rows = timestep_errors(lambda y_t, condition, t: noise, SCHEDULE, y0, None, timesteps=[0, 400, 999],
                           noise=noise)
    assert max(rows["eps_mse"]) < 1e-20 and max(rows["x0_mse"]) < 1e-20


def test_the_trivial_predictor_matches_its_closed_form():
    y0, noise = _sample(1)
    residual_to_target = (lambda volume: 2 * volume + 5.0)       # e.g. an SR residual over a constant floor
    timesteps = [10, 500, 990]
    rows = timestep_errors(lambda y_t, condition, t: torch.zeros_like(y_t), SCHEDULE, y0, None,
                           timesteps=timesteps, noise=noise, to_target=residual_to_target)
    for t, trivial_eps, trivial_x0 in zip(timesteps, rows["trivial_eps_mse"], rows["trivial_x0_mse"]):
        alpha_bar = float(SCHEDULE.alpha_bar[t])
        # eps_hat = y_t / sqrt(1 - ab) misses eps by sqrt(ab / (1 - ab)) y0; x0_hat = 0 misses the target by 2 y0
        assert math.isclose(trivial_eps, alpha_bar / (1 - alpha_bar) * float((y0 ** 2).mean()), rel_tol=1e-9)
        assert math.isclose(trivial_x0, 4 * float((y0 ** 2).mean()), rel_tol=1e-12)


def test_the_region_excludes_padding():
    y0, noise = _sample(2)
    wrong_outside = noise.clone()
    wrong_outside[..., 4:, :, :] += 1.0
    region = (slice(None), slice(None), slice(0, 4))
    rows = timestep_errors(lambda y_t, condition, t: wrong_outside, SCHEDULE, y0, None, timesteps=[300],
                           noise=noise, region=region)
    assert rows["eps_mse"][0] < 1e-20
