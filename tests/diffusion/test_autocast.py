"""The plans' precision at run time: `autocast_for`'s table, a forced CPU bf16 step against float32, the outputs'
dtype, and the loader and trainer using it."""
import functools

import numpy as np
import pytest
import torch
from tiny_plans import tiny_plans

from diffens_auto.devices import autocast_dtype, autocast_for
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.networks import build_expert
from diffens_auto.planning import network_for_task


@pytest.mark.parametrize("plans_dtype, device, force, expected", [
    ("bfloat16", "cuda", False, torch.bfloat16),
    ("float16", "cuda", False, torch.float16),
    ("float32", "cuda", False, None),
    (None, "cuda", False, None),
    ("bfloat16", "cpu", False, None),          # slower on a CPU: float32 unless forced
    ("bfloat16", "cpu", True, torch.bfloat16),
    ("float32", "cpu", True, None),            # nothing to force: the plan is float32
    ("bfloat16", "mps", False, None),
    ("float16", "mps", True, torch.float16),
])
def test_every_row_of_the_precision_table(plans_dtype, device, force, expected):
    assert autocast_dtype(plans_dtype, device, force=force) is expected


def test_an_unknown_dtype_is_refused_and_the_contexts_do_what_they_say():
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        autocast_dtype("int8", "cpu")
    with autocast_for("bfloat16", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_for("bfloat16", "cpu", force=True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _runner():
    plans = tiny_plans()
    network = network_for_task(plans, "2d_axial", "sr")
    torch.manual_seed(0)
    return ExpertRunner.from_network(build_expert(network).eval(), network, 2, 8, name="2d_axial"), network


def test_a_forced_bf16_denoising_step_agrees_with_float32_and_returns_float32():
    runner, network = _runner()
    generator = torch.Generator().manual_seed(1)
    y_t = torch.randn((1, 1, 16, 16, 8), generator=generator)
    condition = torch.randn((1, 1, 16, 16, 8), generator=generator)
    with torch.no_grad():
        plain, _ = runner(y_t, condition, 500)
        runner.autocast = functools.partial(autocast_for, "bfloat16", "cpu", force=True)
        half, features = runner(y_t, condition, 500, want_features=True)
    assert plain.dtype == half.dtype == torch.float32
    relative = float((half - plain).square().mean().sqrt() / plain.square().mean().sqrt())
    assert 0 < relative < 2e-2          # it did run in bf16, and close to float32
    assert features[0].dtype == torch.bfloat16      # the features keep the planned dtype (the memory model's)


def test_a_bf16_plan_keeps_the_input_exactly(trained_demo_folders, tmp_path, monkeypatch):
    from synthetic_images import blob, write_sitk

    from diffens_auto.imageio import read_image
    from diffens_auto.inference.predictor import DiffensPredictor
    from diffens_auto.operators import avgpool_downsample

    monkeypatch.setenv("diffens_force_autocast", "1")
    write_sitk(blob((8, 8, 8), 1) * 4, tmp_path / "case_0003.nii.gz", spacing=(8.0, 8.0, 8.0))
    predictor = DiffensPredictor(progress=False, steps=3).initialize_from_trained_model(900, "sr", "3d_ensembler")
    precision = functools.partial(autocast_for, "bfloat16", "cpu", force=True)     # what a bf16 plan loads with
    for runner in predictor.model.runners.values():
        runner.autocast = precision
    predictor.model.strategy.autocast = precision
    predictor.predict_from_files(tmp_path, tmp_path / "out")
    output, lowres = read_image(tmp_path / "out" / "case.nii.gz")[0], read_image(tmp_path / "case_0003.nii.gz")[0]
    assert np.abs(avgpool_downsample(output.astype(np.float64), 4) - lowres).max() <= 1e-4 * np.abs(lowres).max()


def test_the_loader_and_the_trainer_take_the_plans_precision(trained_demo_folders, monkeypatch):
    from diffens_auto.inference.model import load_trained_model
    from diffens_auto.training.trainer import Trainer

    model = load_trained_model(900, "sr", "3d_ensembler", 0)
    assert model.plans["dtype"] == "float32"     # the tiny preset: nothing to autocast anywhere
    with model.strategy.autocast():
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("diffens_force_autocast", "1")
    trainer = Trainer.__new__(Trainer)
    trainer.dtype, trainer.device = "bfloat16", torch.device("cpu")
    with trainer._autocast():
        assert torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("diffens_force_autocast", "maybe")
    with pytest.raises(ValueError, match="diffens_force_autocast"):
        trainer._autocast()
