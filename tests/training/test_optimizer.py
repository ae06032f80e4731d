"""The plans' training section chooses the optimizer and its weight decay; an unknown optimizer is refused."""
import pytest
import torch
from tiny_plans import tiny_plans

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.networks import build_expert
from diffens_auto.planning import network_for_task
from diffens_auto.training.errors import TrainingSetupError
from diffens_auto.training.objectives import ExpertObjective
from diffens_auto.training.schedule import EpochSchedule, Stage
from diffens_auto.training.trainer import Trainer, make_optimizer


def _trainer(tmp_path, **options):
    network = network_for_task(tiny_plans(), "2d_axial", "sr")
    stage = Stage("train", 1, (16, 16), 2)
    return Trainer(build_expert(network), ExpertObjective(), NoiseSchedule.linear(),
                   EpochSchedule((stage,), 1, 0, 1, stage), None, output_folder=tmp_path, lr=1e-3, ema_decay=0.9,
                   echo=False, **options)


def test_the_default_optimizer_is_adam_without_weight_decay(tmp_path):
    optimizer = _trainer(tmp_path).optimizer
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.param_groups[0]["weight_decay"] == 0.0 and optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("name, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_the_plans_optimizer_and_weight_decay_are_used(tmp_path, name, kind):
    optimizer = _trainer(tmp_path, optimizer=name, weight_decay=0.01).optimizer
    assert type(optimizer) is kind and optimizer.param_groups[0]["weight_decay"] == 0.01


def test_weight_decay_changes_the_update():
    weights = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
    for weight, decay in zip(weights, (0.0, 0.1)):
        optimizer = make_optimizer("adamw", [weight], lr=0.1, weight_decay=decay)
        weight.grad = torch.zeros(3)
        optimizer.step()
    assert torch.equal(weights[0].detach(), torch.ones(3))          # zero gradient, no decay: unchanged
    assert torch.allclose(weights[1].detach(), torch.full((3,), 1 - 0.1 * 0.1))   # decoupled decay: w (1 - lr wd)


def test_an_unknown_optimizer_is_refused_with_the_plans_field():
    with pytest.raises(TrainingSetupError, match=r"training.optimizer 'sgd'.*adam.*adamw"):
        make_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], lr=0.1)
