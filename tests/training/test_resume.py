"""Exact resumption: a run killed with SIGKILL and continued with --c ends where an uninterrupted run ends."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from training.test_checkpoints import tiny_trainer  # tests/ is on the pytest pythonpath

from diffens_auto import paths
from diffens_auto.hashing import file_sha256
from diffens_auto.model_folder import checkpoints as ckpt
from diffens_auto.run.train import train_entry
from diffens_auto.workflows.train import train

DATASET, PLANS = "Dataset900_DemoBrain", "diffensPlans_tiny"
RUN = ["900", "sr", "2d_axial", "-p", PLANS, "--epochs", "4", "--iterations_per_epoch", "3"]


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise equal weights, EMA weights, optimizer state, counters and loss curves."""
    assert a["epoch"] == b["epoch"] and a["iteration"] == b["iteration"]
    for key in ("model",):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in a["ema"]["weights"])
    for slot_a, slot_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(slot_a[k], slot_b[k]) for k in slot_a)
    for curve in ("train_loss", "val_loss"):
        assert a["progress"][curve] == b["progress"][curve]


def test_resumed_trainer_matches_an_uninterrupted_one(tmp_path):
    whole = tiny_trainer(tmp_path / "whole", num_epochs=3)
    whole.fit()
    tiny_trainer(tmp_path / "split", num_epochs=1).fit()       # stops after epoch 1 (its final has epoch 1)
    resumed = tiny_trainer(tmp_path / "split", num_epochs=3, seed=0)
    torch.manual_seed(123)                                      # whatever happened meanwhile: the RNGs are restored
    resumed.fit(continue_training=True)
    assert_same_state(ckpt.load_checkpoint(tmp_path / "whole" / ckpt.FINAL),
                      ckpt.load_checkpoint(tmp_path / "split" / ckpt.FINAL))


@pytest.fixture
def folders(demo_data, tmp_path, monkeypatch):
    """Preprocessed demo data, a results folder per run, zero augmentation workers."""
    monkeypatch.setenv(paths.PREPROCESSED_VARIABLE, str(demo_data.dataset_folder.parent))
    monkeypatch.delenv(paths.RAW_VARIABLE, raising=False)
    monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
    return tmp_path


def _fold(results):
    return results / DATASET / "sr" / f"2d_axial__{PLANS}" / "fold_0"


def test_sigkilled_run_continued_with_c_equals_an_uninterrupted_run(folders, monkeypatch):
    killed = folders / "killed"
    env = dict(os.environ, **{paths.RESULTS_VARIABLE: str(killed), "OMP_NUM_THREADS": "1"})
    with open(folders / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "diffens_auto.run.train", *RUN], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    latest, deadline = _fold(killed) / ckpt.LATEST, time.time() + 120
    while not latest.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, (folders / "stderr.txt").read_text()
    assert latest.exists() and not (_fold(killed) / ckpt.FINAL).exists()
    epochs_done = ckpt.load_checkpoint(latest)["epoch"]
    assert 1 <= epochs_done < 4

    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(killed))
    monkeypatch.setattr(sys, "argv", ["diffens_train", *RUN, "--c"])
    train_entry()
    log = "".join(p.read_text() for p in _fold(killed).glob("training_log_*.txt"))
    assert f"resumed after epoch {epochs_done}" in log

    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(folders / "whole"))
    train(DATASET, "sr", "2d_axial", plans_name=PLANS, num_epochs=4, iterations_per_epoch=3, echo=False,
          validate=False)
    resumed = ckpt.load_checkpoint(_fold(killed) / ckpt.FINAL)
    assert resumed["epoch"] == 4
    assert_same_state(resumed, ckpt.load_checkpoint(_fold(folders / "whole") / ckpt.FINAL))

    # --c on a finished run changes nothing (an ensembler may have recorded this checkpoint's hash)
    digest = file_sha256(_fold(killed) / ckpt.FINAL)
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(killed))
    train_entry()
    assert file_sha256(_fold(killed) / ckpt.FINAL) == digest
    shutil.rmtree(folders / "whole")
