"""Shared fixtures: data folders in tmp_path and a small raw dataset written with SimpleITK."""
import json

import pytest
import torch

from diffens_auto import paths
from synthetic_images import blob, write_sitk

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
