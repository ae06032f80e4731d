"""Checkpoints (weights_only, atomic, RNG states), EMA and the progress log, on in-memory batches (no dataset)."""
import json
import random
import re

import numpy as np
import pytest
import torch

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.model_folder import checkpoints as ckpt
from diffens_auto.networks import build_expert
from diffens_auto.training import rng
from diffens_auto.training.ema import EMA
from diffens_auto.training.objectives import ExpertObjective
from diffens_auto.training.progress import Progress, log_file_name
from diffens_auto.training.schedule import EpochSchedule, Stage
from diffens_auto.training.trainer import Trainer

NETWORK = {"architecture": "diffusion_unet", "spatial_dims": 2, "in_channels": 2, "out_channels": 1,
           "channels": [4, 8], "num_res_blocks": 1, "attention_levels": [], "num_head_channels": 4,
           "time_embed_dim": 16, "dropout": 0.0, "norm_num_groups": 4, "kernel_size": 3}


def in_memory_loaders(split, stage, seed, epoch):
    """A LoaderFactory of random batches seeded by (split, seed, epoch), as the real loaders are."""
    generator = torch.Generator().manual_seed(1000 * seed + 10 * epoch + (split == "val"))
    while True:
        shape = (stage.batch_size, 1, *stage.patch_size)
        yield {"y0": torch.randn(shape, generator=generator), "condition": torch.randn(shape, generator=generator)}


def tiny_trainer(folder, num_epochs=3, checkpoint_every=1, seed=0):
    rng.seed_everything(seed)
    stage = Stage("train", num_epochs, (8, 8), 2)
    schedule = EpochSchedule((stage,), iterations_per_epoch=3, val_iterations=2, checkpoint_every=checkpoint_every,
                        val_stage=stage)
    metadata = {"kind": "expert", "task": "sr", "configuration": "2d_axial", "plans_name": "p", "fold": 0,
                "network": NETWORK, "parametrization": "epsilon_target", "slice_axis": 2}
    return Trainer(build_expert(NETWORK), ExpertObjective(), NoiseSchedule.linear(), schedule, in_memory_loaders,
                   output_folder=folder, lr=1e-3, ema_decay=0.9, metadata=metadata, seed=seed, echo=False)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1)                     # python's cached gaussian is part of the state
    state = rng.rng_state()
    ckpt.save_checkpoint({"rng": state}, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    rng.set_rng_state(ckpt.load_checkpoint(tmp_path / "rng.pth")["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_trained_checkpoint_loads_weights_only_and_rebuilds_the_model(tmp_path):
    trainer = tiny_trainer(tmp_path)
    folder = trainer.fit()
    assert sorted(p.name for p in folder.glob("*.pth")) == [ckpt.BEST, ckpt.FINAL]   # latest removed at the end
    state = torch.load(folder / ckpt.FINAL, map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and state["iteration"] == 9 and state["format_version"] == ckpt.FORMAT_VERSION
    assert len(state["progress"]["train_loss"]) == 3 and state["best_val_loss"] == min(state["progress"]["val_loss"])
    json.dumps({k: v for k, v in state.items() if k not in ("model", "ema", "optimizer", "rng")})  # plain types
    model = ckpt.model_from_checkpoint(state)                  # EMA weights, eval mode
    for name, value in model.state_dict().items():
        assert torch.equal(value, trainer.ema.model.state_dict()[name])
    assert not model.training
    trained = ckpt.model_from_checkpoint(state, weights="model")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), model.parameters()))
    assert not list(tmp_path.glob(".*tmp*"))                   # no temporary files left behind


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / ckpt.FINAL).write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="not a readable diffens_auto checkpoint"):
        ckpt.load_checkpoint(tmp_path / ckpt.FINAL)
    with pytest.raises(ckpt.CheckpointError, match="No checkpoint"):
        ckpt.load_checkpoint(tmp_path / "missing.pth")


def test_resume_checkpoint_is_the_one_with_most_epochs(tmp_path):
    assert ckpt.resume_checkpoint(tmp_path) is None
    ckpt.save_checkpoint({"epoch": 4}, tmp_path / ckpt.LATEST)
    assert ckpt.resume_checkpoint(tmp_path).name == ckpt.LATEST
    ckpt.save_checkpoint({"epoch": 4}, tmp_path / ckpt.FINAL)
    assert ckpt.resume_checkpoint(tmp_path).name == ckpt.FINAL
    ckpt.save_checkpoint({"epoch": 6}, tmp_path / ckpt.LATEST)   # continued past a final with more --epochs
    assert ckpt.resume_checkpoint(tmp_path).name == ckpt.LATEST


def test_ema_warm_up_decay_and_average():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99)                # starts as a copy of the model (weight 0)
    decays, average = [], 0.0
    for value in (1.0, 2.0, 3.0):
        decays.append(ema.current_decay())
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        average = decays[-1] * average + (1 - decays[-1]) * value
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])      # min(d, (1 + n) / (10 + n))
    assert float(ema.model.weight) == pytest.approx(average)
    assert not ema.model.weight.requires_grad and ema.state_dict()["num_updates"] == 3
    for _ in range(1000):
        ema.update(model)
    assert ema.current_decay() == 0.99


def test_progress_log_name_and_plot(tmp_path):
    assert re.fullmatch(r"training_log_\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.txt", log_file_name())
    progress = Progress(tmp_path, echo=False)
    progress.log("hello")
    for epoch in range(3):
        progress.record(1.0 / (epoch + 1), 1.5 / (epoch + 1), 1e-3, 0.5)
    assert progress.plot().read_bytes()[:4] == b"\x89PNG"
    assert progress.log_path.read_text().rstrip().endswith(": hello")
    restored = Progress(tmp_path, writer=False)
    restored.load_state_dict(progress.state_dict())
    assert restored.curves == progress.curves
