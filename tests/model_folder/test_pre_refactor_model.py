"""A model folder and an exported zip made by an earlier version load and predict exactly what that version did.

The fixture (tests/fixtures/pre_refactor_model, made by its make_fixture.py with the code of commit 0a2c299)
holds a tiny sr model (two experts and the 3d_ensembler fusing them) as an exported zip, a held-out input and
that version's predictions (3 DDIM steps, seed 0).
"""
import json
import platform
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diffens_auto import paths
from diffens_auto.imageio import check_same_geometry, read_image
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.model_sharing import install_model_from_zip

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pre_refactor_model"
CASE = "DemoBrain_000"
STRATEGIES = {"3d_ensembler": "ensembler", "average": "average"}


@pytest.fixture
def results_only(tmp_path, monkeypatch):
    """An empty diffens_results and no raw or preprocessed folder, as on a machine that only predicts."""
    monkeypatch.delenv(paths.RAW_VARIABLE, raising=False)
    monkeypatch.delenv(paths.PREPROCESSED_VARIABLE, raising=False)
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(results))
    return results


def _assert_predicts_as_before(output_folder: Path, name: str) -> None:
    predicted, props = read_image(output_folder / f"{CASE}.nii.gz")
    expected, expected_props = read_image(FIXTURE / "expected" / f"{CASE}_{name}.nii.gz")
    assert check_same_geometry(props, expected_props) == []
    assert predicted.shape == expected.shape
    if platform.machine() == json.loads((FIXTURE / "machine.json").read_text())["machine"]:
        np.testing.assert_array_equal(predicted, expected)
    else:   # another instruction set may round differently; the model is still the same one
        np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("configuration", list(STRATEGIES))
def test_an_installed_pre_refactor_zip_predicts_bitwise_as_before(results_only, tmp_path, configuration):
    install_model_from_zip(FIXTURE / "model.zip")
    predictor = DiffensPredictor(steps=3, seed=0, progress=False)
    predictor.initialize_from_trained_model(900, "sr", configuration, 0)
    summary = predictor.predict_from_files(FIXTURE / "input", tmp_path / "out")
    assert summary["failed"] == 0 and summary["done"] == 1
    _assert_predicts_as_before(tmp_path / "out", STRATEGIES[configuration])


def test_a_pre_refactor_model_folder_anywhere_predicts_bitwise_as_before(results_only, tmp_path):
    with zipfile.ZipFile(FIXTURE / "model.zip") as archive:
        archive.extractall(tmp_path / "elsewhere")
    folder = tmp_path / "elsewhere" / "Dataset900_DemoBrain" / "sr" / "3d_ensembler__diffensPlans_tiny"
    predictor = DiffensPredictor(steps=3, seed=0, progress=False).initialize_from_trained_model_folder(folder)
    predictor.predict_from_files(FIXTURE / "input", tmp_path / "out")
    _assert_predicts_as_before(tmp_path / "out", "ensembler")
