"""DiffensPredictor end to end on the briefly trained demo models: geometry, consistency, background, uncertainty."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthetic_images import blob

from diffens_auto.imageio import check_same_geometry, read_image, write_image
from diffens_auto.inference.model import PredictionSetupError, load_trained_model
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.model_folder.recorded_experts import ExpertMismatchError
from diffens_auto.operators import avgpool_downsample, degrade_image, highres_grid

SR = {"type": "avgpool", "factor": [4, 4, 4]}
# An oblique rotation (about 20 degrees around an oblique axis) whose closest canonical orientation is LPS.
OBLIQUE = tuple(float(v) for v in np.array([[0.94, -0.31, 0.14], [0.32, 0.95, -0.04], [-0.12, 0.08, 0.99]]).ravel())


def _orthonormal(direction):
    u, _, vt = np.linalg.svd(np.asarray(direction).reshape(3, 3))
    return tuple(float(v) for v in (u @ vt).ravel())


def _write(array_xyz, path, spacing, origin, direction):
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def _predictor(**kwargs):
    settings = dict(steps=3, progress=False)
    settings.update(kwargs)
    return DiffensPredictor(**settings)


@pytest.fixture
def lowres_input(tmp_path):
    """An oblique, anisotropic, non-zero-origin low-resolution scan (single file, any name)."""
    folder = tmp_path / "in"
    folder.mkdir()
    array = blob((9, 10, 7), 3) * 4
    _write(array, folder / "scan.nii.gz", spacing=(3.2, 3.0, 5.6), origin=(12.5, -40.0, 7.25),
           direction=_orthonormal(OBLIQUE))
    return folder / "scan.nii.gz"


@pytest.mark.parametrize("configuration", ["3d_ensembler", "average", "tpdm", "2d_axial"])
def test_sr_output_has_the_input_grid_times_the_factor_and_pools_back_to_the_input(
        trained_demo_folders, lowres_input, tmp_path, configuration):
    predictor = _predictor().initialize_from_trained_model(900, "sr", configuration)
    summary = predictor.predict_from_files(lowres_input.parent, tmp_path / "out")
    assert summary["done"] == 1 and summary["failed"] == 0, summary
    output, output_props = read_image(tmp_path / "out" / "scan.nii.gz")
    lowres, lowres_props = read_image(lowres_input)
    expected = highres_grid(lowres_props, SR["factor"])
    assert list(output.shape) == [n * 4 for n in lowres.shape]
    assert np.allclose(output_props["spacing"], expected["spacing"], atol=1e-4)
    assert np.allclose(output_props["origin"], expected["origin"], atol=1e-4)
    assert np.allclose(output_props["direction"], lowres_props["direction"], atol=1e-6)
    # consistency: A(output) = input, within 1e-4 of the input's range
    assert np.abs(avgpool_downsample(output, SR["factor"]) - lowres).max() <= 1e-4 * np.ptp(lowres)
    # background: where the input is 0, the output's whole block is exactly 0
    blocks = np.repeat(np.repeat(np.repeat(lowres == 0, 4, 0), 4, 1), 4, 2)
    assert np.all(output[blocks] == 0) and np.any(output[~blocks] != 0)


def test_input_file_axis_order_and_orientation_are_restored(trained_demo_folders, tmp_path):
    """A file stored in LAS-like axis order with permuted axes comes back in the same order, on the SR grid."""
    folder = tmp_path / "in"
    folder.mkdir()
    # file axes (i, j, k) point along world (z, x, -y): a permutation plus a flip relative to canonical RAS
    direction = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0)
    _write(blob((6, 8, 7), 1) * 3, folder / "case_0003.nii.gz", (4.0, 3.5, 3.0), (-20.0, 15.0, 3.0), direction)
    predictor = _predictor().initialize_from_trained_model(900, "sr", "2d_axial")
    assert predictor.predict_from_files(folder, tmp_path / "out")["done"] == 1
    written = sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz"))
    given = sitk.ReadImage(str(folder / "case_0003.nii.gz"))
    assert written.GetSize() == tuple(4 * n for n in given.GetSize())
    assert np.allclose(written.GetDirection(), given.GetDirection(), atol=1e-6)
    assert np.allclose(written.GetSpacing(), np.array(given.GetSpacing()) / 4, atol=1e-5)
    # file voxel (0, 0, 0) of the output sits 1.5 fine voxels before the input's first voxel centre, per axis
    first = np.array(given.TransformContinuousIndexToPhysicalPoint((-0.375, -0.375, -0.375)))
    assert np.allclose(written.GetOrigin(), first, atol=1e-4)


def test_hr_input_grid_keeps_the_input_geometry_and_its_block_means(trained_demo_folders, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(blob((24, 20, 16), 5) * 2, folder / "hr.nii.gz", (1.1, 1.0, 1.9), (3.0, 4.0, -5.0), _orthonormal(OBLIQUE))
    predictor = _predictor(input_grid="hr").initialize_from_trained_model(900, "sr", "2d_sagittal")
    assert predictor.predict_from_files(folder, tmp_path / "out")["done"] == 1
    given, given_props = read_image(folder / "hr.nii.gz")
    output, output_props = read_image(tmp_path / "out" / "hr.nii.gz")
    assert output.shape == given.shape
    assert check_same_geometry(output_props, given_props) == []     # spacing, origin 1e-4 mm; direction 1e-6
    measured = avgpool_downsample(given.astype(np.float64), SR["factor"])
    assert np.abs(avgpool_downsample(output, SR["factor"]) - measured).max() <= 1e-4 * np.ptp(measured)


def test_mt_output_has_the_input_geometry_and_zero_background(trained_demo_folders, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    t1ce = blob((20, 22, 14), 2) * 5
    _write(t1ce, folder / "pat_0001.nii.gz", (1.5, 1.4, 2.5), (-7.0, 30.0, 12.0), _orthonormal(OBLIQUE))
    predictor = _predictor().initialize_from_trained_model(900, "mt", "2d_axial")
    assert predictor.predict_from_files(folder, tmp_path / "out")["done"] == 1
    given, given_props = read_image(folder / "pat_0001.nii.gz")
    output, output_props = read_image(tmp_path / "out" / "pat.nii.gz")
    assert output.shape == given.shape
    assert check_same_geometry(output_props, given_props) == []     # spacing, origin 1e-4 mm; direction 1e-6
    assert np.all(output[given == 0] == 0) and np.any(output[given != 0] != 0)


def test_num_samples_writes_mean_and_a_std_map_zero_outside_the_head(trained_demo_folders, lowres_input, tmp_path):
    predictor = _predictor(num_samples=3, previews=True).initialize_from_trained_model(900, "sr", "average")
    summary = predictor.predict_from_files(lowres_input.parent, tmp_path / "out")
    assert summary["done"] == 1, summary
    std, _ = read_image(tmp_path / "out" / "scan_std.nii.gz")
    lowres, _ = read_image(lowres_input)
    blocks = np.repeat(np.repeat(np.repeat(lowres != 0, 4, 0), 4, 1), 4, 2)
    assert np.all(std[~blocks] == 0)
    assert np.mean(std[blocks] > 0) > 0.99
    assert (tmp_path / "out" / "scan.png").stat().st_size > 1000
    # the mean of projected samples is itself consistent
    mean, _ = read_image(tmp_path / "out" / "scan.nii.gz")
    assert np.abs(avgpool_downsample(mean, SR["factor"]) - lowres).max() <= 1e-4 * np.ptp(lowres)


def test_same_seed_same_output_and_the_first_sample_is_the_one_sample_run(trained_demo_folders, lowres_input):
    lowres, props = read_image(lowres_input)
    one = _predictor(seed=7).initialize_from_trained_model(900, "sr", "2d_axial")
    mean_a, _, _, case = one.predict_volume({3: lowres}, {3: props})
    mean_b, _, _, _ = one.predict_volume({3: lowres}, {3: props})
    assert np.array_equal(mean_a, mean_b)
    three = _predictor(seed=7, num_samples=3).initialize_from_trained_model(900, "sr", "2d_axial")
    samples = three.sample_case(case)
    assert np.array_equal(samples[0], mean_a) and not np.array_equal(samples[1], mean_a)


def test_summary_and_settings_are_written_beside_the_outputs(trained_demo_folders, lowres_input, tmp_path):
    predictor = _predictor(seed=3).initialize_from_trained_model(900, "sr", "3d_ensembler")
    predictor.predict_from_files(lowres_input.parent, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "prediction_summary.json").read_text())
    assert summary["cases"][0]["case"] == "scan" and summary["cases"][0]["status"] == "done"
    assert summary["cases"][0]["seconds"] >= 0
    assert (tmp_path / "out" / "prediction_summary.csv").read_text().startswith("case,status,message,seconds")
    settings = json.loads((tmp_path / "out" / "prediction_settings.json").read_text())
    assert settings["seed"] == 3 and settings["configuration"] == "3d_ensembler" and settings["package_version"]
    roles = [c["role"] for c in settings["checkpoints"]]
    assert roles == ["ensembler", "expert", "expert"]
    assert all(len(c["sha256"]) == 64 for c in settings["checkpoints"])


def test_an_ensembler_whose_expert_changed_is_refused(trained_demo, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(trained_demo.results, results)
    monkeypatch.setenv("diffens_results", str(results))
    monkeypatch.setenv("diffens_preprocessed", str(trained_demo.preprocessed))
    monkeypatch.setenv("diffens_raw", str(trained_demo.raw))
    expert = results / "Dataset900_DemoBrain" / "sr" / "2d_sagittal__diffensPlans_tiny" / "fold_0" / \
        "checkpoint_final.pth"
    state = torch.load(expert, weights_only=True)
    state["epoch"] = int(state["epoch"]) + 1
    torch.save(state, expert)
    with pytest.raises(ExpertMismatchError, match=r"expert 2d_sagittal .*has changed since.*ensembler is refused"):
        load_trained_model(900, "sr", "3d_ensembler")
    # the experts alone are still usable
    assert load_trained_model(900, "sr", "average").ensembler is None


def test_untrained_configuration_names_the_training_commands(trained_demo_folders):
    with pytest.raises(PredictionSetupError, match="diffens_train Dataset900_DemoBrain sr 3d_ensembler_small"):
        load_trained_model(900, "sr", "3d_ensembler_small")
    with pytest.raises(PredictionSetupError, match="neither a trained configuration"):
        load_trained_model(900, "sr", "4d_magic")
    with pytest.raises(PredictionSetupError, match="only -c average or -c tpdm combine chosen experts"):
        load_trained_model(900, "sr", "3d_ensembler", experts=["2d_axial"])
    # default: the trained ensembler; --experts picks what average combines
    assert load_trained_model(900, "sr").configuration == "3d_ensembler"
    assert list(load_trained_model(900, "sr", "average", experts=["2d_sagittal"]).runners) == ["2d_sagittal"]


def test_degraded_training_scan_comes_back_on_the_reference_grid(trained_demo_folders, tmp_path):
    """A degraded training scan predicted back lands on the reference's grid and keeps its block means."""
    raw = trained_demo_folders.raw / "Dataset900_DemoBrain" / "imagesTr" / "DemoBrain_000_0003.nii.gz"
    reference, props = read_image(raw)
    lowres, lowres_props = degrade_image(reference, props, SR)
    folder = tmp_path / "in"
    write_image(lowres, lowres_props, folder / "DemoBrain_000_0003.nii.gz")
    predictor = _predictor().initialize_from_trained_model(900, "sr", "3d_ensembler")
    predictor.predict_from_files(folder, tmp_path / "out")
    output, output_props = read_image(tmp_path / "out" / "DemoBrain_000.nii.gz")
    crop = output[: reference.shape[0], : reference.shape[1], : reference.shape[2]]
    assert np.allclose(output_props["origin"], props["origin"], atol=1e-4)
    assert np.allclose(output_props["spacing"], props["spacing"], atol=1e-4)
    assert np.allclose(output_props["direction"], props["direction"], atol=1e-6)
    # 31 voxels pool to 8 blocks of 4: the output's 32nd row belongs to the reference's partial last block only
    # as far as A goes, so compare the full blocks
    full = [4 * (n // 4) for n in reference.shape]
    pooled = avgpool_downsample(crop[: full[0], : full[1], : full[2]].astype(np.float64), SR["factor"])
    expected = avgpool_downsample(reference[: full[0], : full[1], : full[2]].astype(np.float64), SR["factor"])
    assert np.abs(pooled - expected).max() <= 1e-4 * np.ptp(reference)


def test_a_model_folder_anywhere_predicts_like_the_installed_model(trained_demo, lowres_input, tmp_path,
                                                                     monkeypatch):
    """initialize_from_trained_model_folder: a copied DatasetXXX tree, no data folder variables set."""
    from diffens_auto.inference import DiffensPredictor as Exported
    lowres, props = read_image(lowres_input)
    for variable, folder in trained_demo.folders.items():
        monkeypatch.setenv(variable, str(folder))
    expected = _predictor(seed=2).initialize_from_trained_model(900, "sr", "3d_ensembler").predict_volume(
        {3: lowres}, {3: props})[0]
    copy = tmp_path / "elsewhere" / "Dataset900_DemoBrain"
    shutil.copytree(trained_demo.results / "Dataset900_DemoBrain", copy)
    for variable in trained_demo.folders:
        monkeypatch.delenv(variable)
    predictor = Exported(steps=3, seed=2, progress=False)
    predictor.initialize_from_trained_model_folder(copy / "sr" / "3d_ensembler__diffensPlans_tiny", fold=0)
    assert np.array_equal(predictor.predict_volume({3: lowres}, {3: props})[0], expected)
    with pytest.raises(PredictionSetupError, match="not a model folder"):
        predictor.initialize_from_trained_model_folder(tmp_path)


def test_a_high_resolution_input_off_the_output_grid_names_its_file(trained_demo_folders, tmp_path):
    from diffens_auto.inference.case_preparation import CaseInputError
    raw = trained_demo_folders.raw / "Dataset900_DemoBrain" / "imagesTr"
    flair, flair_props = read_image(raw / "DemoBrain_001_0003.nii.gz")
    lowres, lowres_props = degrade_image(flair, flair_props, SR)
    t1ce, t1ce_props = read_image(raw / "DemoBrain_001_0001.nii.gz")
    shifted = {**t1ce_props, "origin": [v + 1.0 for v in t1ce_props["origin"]]}
    predictor = _predictor().initialize_from_trained_model(900, "both", "2d_axial")
    with pytest.raises(CaseInputError, match=r"t1ce_0001.nii.gz: input 1 is not on the output grid.*origin"):
        predictor.predict_volume({3: lowres, 1: t1ce}, {3: lowres_props, 1: shifted},
                                 files={1: "t1ce_0001.nii.gz", 3: "flair_0003.nii.gz"})
    # on the grid (the T1ce's 31 voxels pool to the input's 8 blocks): the output takes the T1ce's exact grid
    mean, _, props, _ = predictor.predict_volume({3: lowres, 1: t1ce}, {3: lowres_props, 1: t1ce_props})
    assert mean.shape == t1ce.shape and np.allclose(props["origin"], t1ce_props["origin"], atol=1e-4)
