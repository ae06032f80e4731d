"""Tiny plans (preset "tiny") whose network dicts the network tests build."""
import pytest
import torch
from tiny_plans import any_residual_statistics

from diffens_auto.planning import plan_experiment

TASKS = {"sr": {"target": 1, "inputs": [], "degradation": {"type": "avgpool", "factor": [2, 2, 2]}},
         "mt": {"target": 1, "inputs": [0], "degradation": None}}


def small_fingerprint(shape=(32, 32, 24), num_cases=3):
    """A fingerprint of `num_cases` 1 mm cases of one foreground size, as the fingerprint stage writes it."""
    intensity = {"mean": 300.0, "std": 100.0, "median": 290.0, "min": 0.0, "max": 1200.0,
                 "percentile_00_5": 20.0, "percentile_99_5": 820.0}
    return {"case_identifiers": [f"case_{i:03d}" for i in range(num_cases)],
            "spacings": [[1.0, 1.0, 1.0]] * num_cases,
            "shapes_before_crop": [list(shape)] * num_cases,
            "shapes_after_crop": [list(shape)] * num_cases,
            "channel_names": {"0": "T1", "1": "FLAIR"},
            "foreground_intensity_properties_per_channel": {"0": dict(intensity), "1": dict(intensity)},
            "residual_statistics_per_channel": any_residual_statistics(2)}


@pytest.fixture(scope="session")
def tiny_plans():
    """Tiny plans on a 32 x 32 x 24 crop: 3 levels, experts 8-16-32 with attention at level 2."""
    return plan_experiment(small_fingerprint(), TASKS, {0: "T1", 1: "FLAIR"}, "Dataset901_Tiny", preset="tiny")


def _randomize(module, seed=0, std=0.2):
    """Overwrite every parameter (or the one tensor given) with N(0, std^2) noise so zero-initialised paths matter."""
    generator = torch.Generator().manual_seed(seed)
    parameters = [module] if isinstance(module, torch.Tensor) else list(module.parameters())
    with torch.no_grad():
        for parameter in parameters:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module


@pytest.fixture(scope="session")
def randomize():
    """randomize(module, seed=0, std=0.2): fill every parameter with Gaussian noise (in place) and return it."""
    return _randomize
