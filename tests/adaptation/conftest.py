"""A tiny recon problem for the adaptation tests: an untrained 2D prior of the tiny plans and an oblique bundle."""
import pytest
import torch
from tiny_plans import RECON_TASK, tiny_recon_plans

from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.networks import build_expert
from diffens_auto.planning import network_for_task

DEGRADATION = {"type": "kspace", "mask": "poisson", "acceleration": 3, "acs": 4, "slice_axis": 2, "noise_std": 0.0,
               "mask_per_slice": True}


@pytest.fixture
def recon_plans():
    """Tiny plans of a recon task with per-slice Poisson masks along Z."""
    return tiny_recon_plans(degradation=DEGRADATION)


@pytest.fixture
def make_runner():
    """make_runner(plans, name="2d_axial", seed=0): an untrained expert of `plans` (eval mode) behind its runner."""
    def make(plans, name="2d_axial", seed=0, slice_batch_size=4):
        torch.manual_seed(seed)
        network = network_for_task(plans, name, RECON_TASK)
        expert = build_expert(network).eval()
        return ExpertRunner.from_network(expert, network, plans["configurations"][name]["slice_axis"],
                                         slice_batch_size, name=name)
    return make
