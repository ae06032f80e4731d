"""`diffens_compile=1`: the networks run torch.compile'd at prediction, with the plain path's outputs."""
import numpy as np
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto.imageio import read_image
from diffens_auto.inference.predictor import DiffensPredictor


def test_compiled_networks_predict_what_the_plain_ones_do(trained_demo_folders, tmp_path, monkeypatch):
    write_sitk(blob((8, 8, 8), 1) * 4, tmp_path / "case_0003.nii.gz", spacing=(8.0, 8.0, 8.0))
    plain = DiffensPredictor(progress=False, steps=2).initialize_from_trained_model(900, "sr", "2d_axial")
    assert all(runner.compiled is None for runner in plain.model.runners.values())
    plain.predict_from_files(tmp_path, tmp_path / "plain")
    monkeypatch.setenv("diffens_compile", "1")
    compiled = DiffensPredictor(progress=False, steps=2).initialize_from_trained_model(900, "sr", "2d_axial")
    assert all(runner.compiled is not None for runner in compiled.model.runners.values())
    compiled.predict_from_files(tmp_path, tmp_path / "compiled")
    a, b = (read_image(tmp_path / f / "case.nii.gz")[0] for f in ("plain", "compiled"))
    assert np.allclose(a, b, atol=1e-4 * np.abs(a).max())
    monkeypatch.setenv("diffens_compile", "sometimes")
    with pytest.raises(ValueError, match="diffens_compile"):
        DiffensPredictor(progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
