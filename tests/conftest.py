"""Shared fixtures: data folders in tmp_path and a small raw dataset written with SimpleITK."""
import json

import pytest
import torch
from synthetic_images import blob, write_sitk

from diffens_auto import paths

# Tests use tiny tensors: one thread is as fast, and OpenMP threads slow down ~100x on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def diffens_folders(tmp_path, monkeypatch):
    """Point diffens_raw/preprocessed/results at fresh folders for one test."""
    folders = {}
    for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        folder = tmp_path / variable
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
        folders[variable] = folder
    return folders


@pytest.fixture
def small_raw_dataset(diffens_folders):
    """A 4-case, 2-channel raw dataset Dataset042_Small with tasks sr and mt."""
    folder = diffens_folders[paths.RAW_VARIABLE] / "Dataset042_Small"
    (folder / "imagesTr").mkdir(parents=True)
    for i in range(4):
        shape = (16, 18, 12)
        for c in range(2):
            write_sitk(blob(shape, 10 * i + c) * (1 + c), folder / "imagesTr" / f"case{i}_{c:04d}.nii.gz",
                       spacing=(1.0, 1.0, 1.5), origin=(5.0, -3.0, 2.0))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "numTraining": 4, "file_ending": ".nii.gz",
        "tasks": {"sr": {"target": "T2", "inputs": [], "degradation": {"type": "avgpool", "factor": [2, 2, 2]}},
                  "mt": {"target": "T2", "inputs": ["T1"]}}}))
    return folder


TRAINED_DEMO_MODELS = (("sr", "2d_axial"), ("sr", "2d_sagittal"), ("sr", "3d_ensembler"), ("mt", "2d_axial"),
                       ("both", "2d_axial"))


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """Dataset900_DemoBrain (4 cases of 32^3 at 2 mm, tiny plans) with briefly trained fold-0 models.

    sr: 2d_axial, 2d_sagittal and 3d_ensembler (fusing those two); mt and both: 2d_axial. One epoch of 2 iterations each:
    the weights are barely trained, which is all that shapes, geometry and bookkeeping tests need. Returns a
    namespace with the three folders (raw, preprocessed, results), the dataset name and the plans name; use the
    `trained_demo_folders` fixture to point the environment variables at them.
    """
    from types import SimpleNamespace

    from diffens_auto.demo.dataset import make_demo_dataset
    from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
    from diffens_auto.workflows.train import train

    root = tmp_path_factory.mktemp("trained_demo")
    folders = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
            folders[variable] = root / variable
            folders[variable].mkdir()
            monkeypatch.setenv(variable, str(folders[variable]))
        make_demo_dataset(num_cases=4, shape=(32, 32, 32), spacing=(2, 2, 2))
        plan_and_preprocess(900, preset="tiny", num_processes=1)
        for task, configuration in TRAINED_DEMO_MODELS:
            train(900, task, configuration, 0, num_epochs=1, iterations_per_epoch=2, echo=False, validate=False)
    return SimpleNamespace(root=root, folders=folders, raw=folders[paths.RAW_VARIABLE],
                           preprocessed=folders[paths.PREPROCESSED_VARIABLE], results=folders[paths.RESULTS_VARIABLE],
                           dataset_name="Dataset900_DemoBrain", plans_name="diffensPlans_tiny")


@pytest.fixture
def trained_demo_folders(trained_demo, monkeypatch):
    """Point diffens_raw/preprocessed/results at the trained demo's folders for one test; returns the namespace."""
    for variable, folder in trained_demo.folders.items():
        monkeypatch.setenv(variable, str(folder))
    return trained_demo
