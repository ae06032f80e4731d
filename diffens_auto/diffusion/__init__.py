"""Diffusion maths shared by training, prediction and test-time adaptation: schedule, samplers, sampling loop."""
from .samplers import (DEFAULT_CLIP_X0, DDIMSampler, DDPMSampler, RespacedSampler, clip_value, gaussian_noise,
                       respaced_timesteps, sampler_from_plans, space_timesteps)
from .sampling import sample
from .schedule import NoiseSchedule

__all__ = [
    "NoiseSchedule",
    "DDIMSampler", "DDPMSampler", "RespacedSampler", "DEFAULT_CLIP_X0", "clip_value", "respaced_timesteps",
    "sampler_from_plans", "space_timesteps",
    "gaussian_noise", "sample",
]
