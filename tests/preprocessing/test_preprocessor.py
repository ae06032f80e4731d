"""preprocess_case and invert_preprocessing on oblique, anisotropic NIfTI cases written by SimpleITK."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from diffens_auto.foreground import EmptyCaseError
from diffens_auto.imageio import check_same_geometry, read_image
from diffens_auto.preprocessing import (degraded_params, export_prediction, invert_preprocessing, kspace_params,
                                        mask_seed, preprocess_case, preprocessing_settings, renormalize, select_params)


def oblique_direction(degrees: float = 15.0) -> np.ndarray:
    """A rotation about an oblique axis times an axis permutation with a flip (file axes are not RAS)."""
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.deg2rad(degrees)
    rotation = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    permutation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # file axis 0 -> world y, 1 -> -x
    return rotation @ permutation


def smooth_head(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Positive inside an ellipsoid, exactly 0 outside, smooth (C2) across its surface; two soft blobs inside."""
    q = (points - centre) / np.array([12.0, 13.0, 14.0])
    window = np.clip(1.0 - (q ** 2).sum(-1), 0.0, None) ** 3
    blobs = 200 * np.exp(-((points - centre - [3, -2, 4]) ** 2).sum(-1) / (2 * 4.0 ** 2)) + \
        120 * np.exp(-((points - centre + [4, 3, 3]) ** 2).sum(-1) / (2 * 5.0 ** 2))
    return window * (300.0 + blobs)


def write_case(path, shape, spacing, direction, channel_fns, origin=(-20.0, 15.0, -30.0)):
    """Render world-space functions on a (file-order) grid and write one NIfTI per channel; return the paths."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    points = np.asarray(origin) + (idx * np.asarray(spacing)) @ np.asarray(direction).T
    files = []
    for c, fn in enumerate(channel_fns):
        values = fn(points).reshape(shape).astype(np.float32)
        image = sitk.GetImageFromArray(np.transpose(values, (2, 1, 0)))
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in origin])
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
        files.append(path / f"case_{c:04d}.nii.gz")
        sitk.WriteImage(image, str(files[-1]))
    return files


def grid_centre(shape, spacing, direction, origin=(-20.0, 15.0, -30.0)):
    return np.asarray(origin) + np.asarray(direction) @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2)


def plans_for(target_spacing, order_z=0):
    return {"plans_name": "diffensPlans", "data_identifier": "diffensPlans", "target_spacing": list(target_spacing),
            "channel_names": {"0": "T1", "1": "FLAIR"},
            "resampling": {"order": 3, "order_z": order_z, "anisotropy_threshold": 3.0},
            "normalization": {"scheme": "percentile_affine", "percentiles": [0.5, 99.5],
                              "dataset": {"1": {"center": 150.0, "half_range": 150.0}}},
            "tasks": {"sr": {"target": 1, "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}}}}


def two_channel_case(tmp_path, shape, spacing):
    """Channel 0: smooth head; channel 1: the same head, rescaled, plus a bright off-centre blob."""
    direction = oblique_direction()
    centre = grid_centre(shape, spacing, direction)
    fns = [lambda p: smooth_head(p, centre),
           lambda p: 0.5 * smooth_head(p, centre) * (1 + np.exp(-((p - centre - [-4, 4, -3]) ** 2).sum(-1) / 30))]
    return write_case(tmp_path, shape, spacing, direction, fns)


def psnr_foreground(reference, test):
    fg = reference != 0
    data_range = reference[fg].max() - reference[fg].min()
    return 10 * np.log10(data_range ** 2 / np.mean((reference[fg] - test[fg]) ** 2))


def test_round_trip_at_the_case_spacing_is_exact(tmp_path):
    # file spacing (2.5, 1, 1) with file axis 0 -> world y: canonical spacing is (1, 2.5, 1)
    files = two_channel_case(tmp_path, (14, 34, 32), (2.5, 1.0, 1.0))
    reference, reference_props = read_image(files[1])
    assert reference_props["spacing"] == pytest.approx([1.0, 2.5, 1.0])
    plans = plans_for(reference_props["spacing"])
    data, mask, props, mask_original = preprocess_case(files, plans, "case", return_mask_original=True)
    assert data.dtype == np.float32 and mask.dtype == np.uint8 and mask_original.dtype == np.uint8
    assert props["shape_after_resampling"] == props["shape_after_crop"] == list(data.shape[1:])
    assert props["shape_before_crop"] == list(reference.shape)
    assert props["resampling"]["separate_z_axis"] is None
    json.dumps(props)  # JSON-serialisable

    out = tmp_path / "inverted.nii.gz"
    export_prediction(data[1], props, 1, out, mask_original=mask_original)
    inverted, inverted_props = read_image(out)
    assert inverted.shape == reference.shape
    assert check_same_geometry(reference_props, inverted_props, 1e-4, 1e-4, 1e-6) == []
    data_range = reference.max() - reference.min()
    assert np.abs(inverted - reference).max() <= 1e-5 * data_range
    assert np.all(inverted[reference == 0] == 0)


@pytest.mark.parametrize("spacing, target, separate", [
    ((2.5, 1.0, 1.0), (1.0, 1.0, 1.0), None),        # canonical (1, 2.5, 1): upsample Y in 3D
    ((3.5, 1.0, 1.0), (1.25, 1.75, 1.25), 1),      # canonical (1, 3.5, 1): separate-z along Y
])
def test_round_trip_with_resampling_keeps_geometry_and_background(tmp_path, spacing, target, separate):
    files = two_channel_case(tmp_path, (14 if spacing[0] == 2.5 else 10, 34, 32), spacing)
    reference, reference_props = read_image(files[0])
    data, mask, props, mask_original = preprocess_case(files, plans_for(target), "case", return_mask_original=True)
    assert props["resampling"]["separate_z_axis"] == separate
    assert props["shape_after_resampling"] != props["shape_after_crop"]
    array, props_out = invert_preprocessing(data[0], props, 0, mask_original=mask_original)
    out = tmp_path / "inverted.nii.gz"
    export_prediction(data[0], props, 0, out, mask_original=mask_original)
    inverted, inverted_props = read_image(out)
    assert np.array_equal(inverted, array)
    assert check_same_geometry(reference_props, inverted_props, 1e-4, 1e-4, 1e-6) == []
    assert inverted.shape == reference.shape
    assert np.all(inverted[reference == 0] == 0)
    assert psnr_foreground(reference, inverted) >= 35.0


def test_properties_and_normalisations(tmp_path):
    files = two_channel_case(tmp_path, (14, 34, 32), (2.5, 1.0, 1.0))
    data, mask, props = preprocess_case(files, plans_for((1.0, 1.0, 1.0)), "BraTS_001")
    assert props["case_id"] == "BraTS_001" and props["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert props["spacing_before_resampling"] == pytest.approx([1.0, 2.5, 1.0])
    assert props["spacing_after_resampling"] == [1.0, 1.0, 1.0]
    fg = mask.astype(bool)
    for c in range(2):
        case = props["normalization"][str(c)]["case"]
        # "case" parameters: percentiles of the original-resolution foreground
        original, _ = read_image(files[c])
        lo, hi = np.percentile(original[original != 0].astype(np.float64), [0.5, 99.5])
        assert case["center"] == pytest.approx((lo + hi) / 2) and case["half_range"] == pytest.approx((hi - lo) / 2)
        assert np.percentile(data[c][fg], 99.5) == pytest.approx(1, abs=0.05)
        assert np.allclose(data[c][~fg], -case["center"] / case["half_range"])  # background is raw 0
    norm1 = props["normalization"]["1"]
    assert set(norm1["degraded"]) == {"avgpool_4x4x4"} and props["normalization"]["0"]["degraded"] == {}
    assert norm1["dataset"] == {"center": 150.0, "half_range": 150.0}
    degraded = select_params(norm1, "degraded:avgpool_4x4x4")
    raw = data[1].astype(np.float64) * norm1["case"]["half_range"] + norm1["case"]["center"]
    raw[~fg] = 0
    assert degraded == pytest.approx(degraded_params(raw, (4, 4, 4)), rel=1e-5)
    as_degraded = renormalize(data[1], norm1["case"], degraded)
    assert np.allclose(as_degraded, (raw - degraded["center"]) / degraded["half_range"], atol=1e-5)


def test_a_recon_task_stores_its_scale_and_only_then_a_settings_entry(tmp_path):
    files = two_channel_case(tmp_path, (14, 34, 32), (2.5, 1.0, 1.0))
    degradation = {"type": "kspace", "mask": "poisson", "acceleration": 4.0, "acs": 6, "slice_axis": 2,
                   "noise_std": 0.0, "mask_per_slice": False}
    plans = plans_for((1.0, 1.0, 1.0))
    recon = {**plans, "tasks": {**plans["tasks"], "recon": {"target": 0, "inputs": [], "degradation": degradation}}}
    data, mask, props = preprocess_case(files, recon, "BraTS_001")
    stored = props["normalization"]["0"]
    scale = stored["degraded"]["kspace_poisson_4x_acs6_z"]
    raw = data[0].astype(np.float64) * stored["case"]["half_range"] + stored["case"]["center"]
    raw[~mask.astype(bool)] = 0
    assert scale["center"] == 0.0
    assert scale["half_range"] == pytest.approx(kspace_params(raw, degradation, mask_seed("BraTS_001"))["half_range"],
                                                rel=1e-5)
    # plans without a recon task keep the settings their cases were made with (nothing is preprocessed again)
    assert "kspace_targets" not in preprocessing_settings(plans)
    assert preprocessing_settings(recon)["kspace_targets"] == {"0": {"kspace_poisson_4x_acs6_z": degradation}}
    assert {k: v for k, v in preprocessing_settings(recon).items() if k != "kspace_targets"} == \
        preprocessing_settings(plans)


def test_all_zero_case_is_a_clear_error(tmp_path):
    files = write_case(tmp_path, (8, 8, 8), (1, 1, 1), np.eye(3), [lambda p: np.zeros(len(p))])
    with pytest.raises(EmptyCaseError, match=r"case Empty_3 .*case_0000\.nii\.gz.*every voxel.*Fix"):
        preprocess_case(files, {**plans_for((1, 1, 1)), "channel_names": {"0": "T1"}}, "Empty_3")


def test_wrong_number_of_files_is_a_clear_error(tmp_path):
    files = write_case(tmp_path, (8, 8, 8), (1, 1, 1), np.eye(3), [lambda p: np.ones(len(p))])
    with pytest.raises(ValueError, match="1 file.*2 channels"):
        preprocess_case(files, plans_for((1, 1, 1)), "c")
