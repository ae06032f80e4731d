"""A recon task end to end up to its checkpoints: ellipsoid phantoms with a kspace task, planned and preprocessed
with the tiny preset, its unconditional experts and ensembler trained a few iterations (diffens_train and the API)."""
import json
import sys

import numpy as np
import pytest

from recon_datasets import ellipsoid_recon_dataset

from diffens_auto import paths
from diffens_auto.model_folder.checkpoints import FINAL, load_checkpoint, model_from_checkpoint
from diffens_auto.networks import Ensembler
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.preprocessing import kspace_params, mask_seed
from diffens_auto.preprocessing.storage import load_case
from diffens_auto.run.train import train_entry
from diffens_auto.training.data_loading import EnsemblerDataLoader, ExpertDataLoader
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
from diffens_auto.workflows.train import train

DATASET, PLANS, TASK = "Dataset901_DemoEllipses", "diffensPlans_tiny", "recon"
KSPACE = {"type": "kspace", "mask": "poisson", "acceleration": 4, "acs": 6, "slice_axis": 2}
KEY = "kspace_poisson_4x_acs6_z"
QUICK = dict(plans_name=PLANS, num_epochs=1, iterations_per_epoch=2, echo=False, validate=False)


@pytest.fixture(scope="module")
def recon(tmp_path_factory):
    """Three 24^3 ellipsoid phantoms whose dataset.json has only a recon task, planned (tiny) and preprocessed."""
    root = tmp_path_factory.mktemp("recon_training")
    with pytest.MonkeyPatch.context() as monkeypatch:
        ellipsoid_recon_dataset(root, monkeypatch, 901, 3, kspace=KSPACE)
        plan_and_preprocess(901, preset="tiny", num_processes=1)
        preprocessed = root / paths.PREPROCESSED_VARIABLE / DATASET
        yield preprocessed, load_plans(preprocessed, PLANS)


def test_the_recon_plans_and_the_stored_scale(recon):
    preprocessed, plans = recon
    task = plans["tasks"][TASK]
    assert task["condition_channels"] == [] and task["target_normalization"] == f"degraded:{KEY}"
    assert "residual_scale" not in task and "clip_x0" not in task
    data, mask, properties = load_case(preprocessed / plans["data_identifier"], "DemoEllipses_000", mmap=False)
    entry = properties["normalization"]["0"]
    raw = data[0].astype(np.float64) * entry["case"]["half_range"] + entry["case"]["center"]
    raw[np.asarray(mask) == 0] = 0          # preprocessing's zero background
    expected = kspace_params(raw, task["degradation"], mask_seed("DemoEllipses_000"))
    assert entry["degraded"][KEY]["center"] == 0.0
    assert entry["degraded"][KEY]["half_range"] == pytest.approx(expected["half_range"], rel=1e-4)


def test_unconditional_batches_hold_the_scaled_target_and_positions_only(recon):
    preprocessed, plans = recon
    data_folder = preprocessed / plans["data_identifier"]
    cases = ["DemoEllipses_000", "DemoEllipses_001"]
    expert = next(iter(ExpertDataLoader(data_folder, cases, plans, TASK, "2d_axial", num_workers=0)))
    batch = plans["configurations"]["2d_axial"]["batch_size"]
    crop = plans["crop_size"]
    assert expert["condition"].shape == (batch, 3, crop[0], crop[1])          # position channels alone
    assert expert["y0"].shape == (batch, 1, crop[0], crop[1]) and 0.5 < float(expert["y0"].max()) < 3
    ensembler = next(iter(EnsemblerDataLoader(data_folder, cases, plans, TASK, "3d_ensembler", num_workers=0)))
    assert ensembler["condition"].shape[:2] == (1, 0) and ensembler["positions"].shape[1] == 3


def test_experts_and_ensembler_of_a_recon_task_train_and_write_their_checkpoints(recon, monkeypatch):
    _, plans = recon
    monkeypatch.setattr(sys, "argv", ["diffens_train", "901", TASK, "2d_axial", "-p", PLANS, "--epochs", "1",
                                      "--iterations_per_epoch", "2", "--no_val"])
    train_entry()
    folders = {name: paths.results_folder() / DATASET / TASK / f"{name}__{PLANS}" / "fold_0"
               for name in ("2d_axial", "2d_sagittal", "3d_ensembler")}
    train(DATASET, TASK, "2d_sagittal", **QUICK)
    train(DATASET, TASK, "3d_ensembler", **QUICK)
    for name, folder in folders.items():
        checkpoint = load_checkpoint(folder / FINAL)
        assert checkpoint["task_plans"] == plans["tasks"][TASK] and checkpoint["epoch"] == 1
        assert checkpoint["parametrization"] == "epsilon_target"
        assert checkpoint["network"]["in_channels"] == (3 if name == "3d_ensembler" else 4)
    ensembler = load_checkpoint(folders["3d_ensembler"] / FINAL)
    assert [e["name"] for e in ensembler["experts"]] == ["2d_axial", "2d_sagittal"]
    assert all(e["condition_indices"] is None for e in ensembler["experts"])
    assert isinstance(model_from_checkpoint(ensembler), Ensembler)


def test_experts_of_a_recon_task_and_of_other_tasks_do_not_fuse(recon):
    from diffens_auto.model_folder.recorded_experts import ExpertMismatchError
    from diffens_auto.training.experts import condition_indices
    _, plans = recon
    task = plans["tasks"][TASK]
    eight = dict(task, degradation=dict(task["degradation"], acceleration=8.0),
                 target_normalization="degraded:kspace_poisson_8x_acs6_z")
    sr = dict(task, degradation={"type": "avgpool", "factor": [2, 2, 2]}, condition_channels=[0],
              parametrization="epsilon_residual", prediction="v", target_normalization="degraded:avgpool_2x2x2",
              residual_scale=4.0, clip_x0=6.0)
    plans = {**plans, "tasks": {TASK: task, "recon8": eight, "sr": sr}}
    assert condition_indices(plans, TASK, TASK) is None
    # each prior's scale comes from its own task's zero-filled image, which another task's ensembler lacks
    with pytest.raises(ExpertMismatchError, match="task 'recon8'.*only an expert on the dataset's normalisation"):
        condition_indices(plans, TASK, "recon8")
    # even on the same scale, an SR expert's residual needs the degraded input a recon task does not have
    same_scale = {**plans, "tasks": {**plans["tasks"],
                                     "sr": dict(sr, target_normalization=task["target_normalization"])}}
    with pytest.raises(ExpertMismatchError, match="task 'sr' predicts an SR residual but task 'recon' has no "
                                                  "degraded input"):
        condition_indices(same_scale, TASK, "sr")
    with pytest.raises(ExpertMismatchError, match="task 'recon'.*only an expert on the dataset's normalisation"):
        condition_indices(plans, "sr", TASK)
