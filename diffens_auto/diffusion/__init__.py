"""Diffusion maths shared by training, prediction and test-time adaptation: schedule, samplers, sampling loop."""
from .dds import DDSDataConsistency, dds_sample, dds_start, slerp, slice_correlated_noise
from .samplers import (DEFAULT_CLIP_X0, DDIMSampler, DDPMSampler, ETA_CONVENTIONS, RespacedSampler, clip_value,
                       gaussian_noise, respaced_timesteps, sampler_from_plans, space_timesteps)
from .sampling import sample
from .schedule import NoiseSchedule

__all__ = [
    "NoiseSchedule",
    "DDIMSampler", "DDPMSampler", "RespacedSampler", "DEFAULT_CLIP_X0", "ETA_CONVENTIONS", "clip_value",
    "respaced_timesteps", "sampler_from_plans", "space_timesteps",
    "gaussian_noise", "sample",
    "DDSDataConsistency", "dds_sample", "dds_start", "slerp", "slice_correlated_noise",
]
