"""evaluate_folders end to end on files written with SimpleITK: rows, failures, regions, JSON and CSV."""
import json

import numpy as np
import pandas as pd
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto.evaluation import evaluate_folders, mace, mae, psnr, ssim3d
from diffens_auto.imageio import read_image

SHAPE = (16, 14, 12)


@pytest.fixture
def folders(tmp_path):
    """ref c0..c4; pred: c0 noisy with a std map, c1 identical, c2 noisy, c3 on another grid, c4 missing, extra."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        write_sitk(blob(SHAPE, i), ref / f"c{i}.nii.gz", spacing=(1.0, 1.0, 2.0))
    for i in (0, 2):
        write_sitk(blob(SHAPE, i) + rng.normal(0, 4, SHAPE), pred / f"c{i}.nii.gz", spacing=(1.0, 1.0, 2.0))
    write_sitk(np.full(SHAPE, 3.0), pred / "c0_std.nii.gz", spacing=(1.0, 1.0, 2.0))
    write_sitk(blob(SHAPE, 1), pred / "c1.nii.gz", spacing=(1.0, 1.0, 2.0))
    write_sitk(blob(SHAPE, 3), pred / "c3.nii.gz", spacing=(1.0, 1.0, 2.5))
    write_sitk(blob(SHAPE, 9), pred / "extra.nii.gz", spacing=(1.0, 1.0, 2.0))
    return ref, pred


def rows_by(results):
    return {(r["case"], r["region"]): r for r in results["per_case"]}


def test_cases_regions_failures_and_files(folders, tmp_path):
    ref, pred = folders
    with pytest.warns(UserWarning, match="extra.nii.gz"):
        results = evaluate_folders(ref, pred, num_processes=1, verbose=False)
    rows = rows_by(results)
    assert set(rows) == {("c0", "all"), ("c0", "foreground"), ("c1", "all"), ("c1", "foreground"),
                         ("c2", "all"), ("c2", "foreground"), ("c3", "all"), ("c4", "all")}
    assert "c0_std" not in {r["case"] for r in results["per_case"]}

    reference, _ = read_image(ref / "c0.nii.gz")
    prediction, _ = read_image(pred / "c0.nii.gz")
    foreground = reference != 0
    for region, mask in (("all", None), ("foreground", foreground)):
        row = rows[("c0", region)]
        assert row["status"] == "ok" and row["message"] == ""
        assert row["psnr"] == pytest.approx(psnr(reference, prediction, mask=mask), abs=1e-9)
        assert row["ssim"] == pytest.approx(ssim3d(reference, prediction, mask=mask), abs=1e-9)
        assert row["mae"] == pytest.approx(mae(reference, prediction, mask), abs=1e-9)
        assert row["mace"] == pytest.approx(mace(reference, prediction, np.full(SHAPE, 3.0), mask), abs=1e-6)
        assert row["num_voxels"] == (reference.size if mask is None else int(mask.sum()))
    assert rows[("c0", "all")]["data_range"] == pytest.approx(float(reference.max() - reference.min()))
    assert rows[("c2", "all")]["mace"] is None                       # no std map

    identical = rows[("c1", "all")]
    assert identical["psnr"] is None and "infinite" in identical["message"] and identical["ssim"] == 1.0

    mismatch = rows[("c3", "all")]
    assert mismatch["status"] == "failed" and mismatch["psnr"] is None
    assert str(pred / "c3.nii.gz") in mismatch["message"] and str(ref / "c3.nii.gz") in mismatch["message"]
    assert "spacing" in mismatch["message"] and "Fix:" in mismatch["message"]
    assert rows[("c4", "all")]["status"] == "failed" and "no prediction" in rows[("c4", "all")]["message"]
    assert [f["case"] for f in results["failed"]] == ["c3", "c4"]
    assert results["ignored_predictions"] == ["extra.nii.gz"]

    mean = results["mean"]
    assert list(mean) == ["all", "foreground"] and mean["all"]["num_cases"] == 3
    assert mean["all"]["psnr"] is None                                # c1's infinite PSNR makes the mean infinite
    assert mean["all"]["mae"] == pytest.approx(np.mean([rows[(c, "all")]["mae"] for c in ("c0", "c1", "c2")]))
    assert mean["all"]["mace"] == pytest.approx(rows[("c0", "all")]["mace"])   # only c0 has a std map
    dataset = results["dataset"]
    assert dataset["num_cases"] == 5 and dataset["num_failed"] == 2
    assert isinstance(dataset["mmd2"], float) and dataset["mmd_settings"]["num_patches"] == 3 * 32

    assert json.loads((pred / "evaluation.json").read_text()) == results
    table = pd.read_csv(pred / "evaluation.csv", keep_default_na=False)
    assert list(table.columns) == ["case", "region", "psnr", "ssim", "mae", "mace", "data_range", "num_voxels",
                                   "status", "message"]
    assert len(table) == 8 + 2 and list(table["case"][-2:]) == ["mean", "mean"]
    assert table.loc[(table["case"] == "c1") & (table["region"] == "all"), "psnr"].item() == "inf"
    assert table.loc[(table["case"] == "mean") & (table["region"] == "all"), "psnr"].item() == "inf"
    assert not list(tmp_path.rglob("*.tmp*"))


def test_masks_give_label_regions_and_a_given_range(tmp_path):
    ref, pred, masks = tmp_path / "ref", tmp_path / "pred", tmp_path / "masks"
    for folder in (ref, pred, masks):
        folder.mkdir()
    reference = blob(SHAPE, 5)
    prediction = reference + np.random.default_rng(1).normal(0, 2, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    labels[3:9, 2:12, 1:11] = 1
    labels[9:14, 2:12, 1:11] = 2
    write_sitk(reference, ref / "a_0000.nii.gz")
    write_sitk(prediction, pred / "a.nii.gz")
    write_sitk(labels, masks / "a.nii.gz")
    results = evaluate_folders(ref, pred, mask_folder=masks, output_file=tmp_path / "out" / "m.json",
                               data_range=200.0, num_processes=1, mmd=False, verbose=False)
    reference, _ = read_image(ref / "a_0000.nii.gz")
    prediction, _ = read_image(pred / "a.nii.gz")
    labels, _ = read_image(masks / "a.nii.gz")
    rows = rows_by(results)
    assert set(rows) == {("a", "all"), ("a", "label_1"), ("a", "label_2")}
    for region, mask in (("all", labels > 0), ("label_1", labels == 1), ("label_2", labels == 2)):
        assert rows[("a", region)]["psnr"] == pytest.approx(psnr(reference, prediction, 200.0, mask), abs=1e-9)
        assert rows[("a", region)]["ssim"] == pytest.approx(ssim3d(reference, prediction, 200.0, mask), abs=1e-9)
        assert rows[("a", region)]["num_voxels"] == int(mask.sum()) and rows[("a", region)]["data_range"] == 200.0
    assert results["dataset"]["mmd2"] is None and results["dataset"]["mmd_settings"] == {"computed": False}
    assert (tmp_path / "out" / "m.json").is_file() and (tmp_path / "out" / "m.csv").is_file()


def test_small_volumes_have_no_ssim_and_workers_agree(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    for i in range(2):
        write_sitk(blob((10, 9, 8), i), ref / f"s{i}.mha")
        write_sitk(blob((10, 9, 8), i) * 0.9, pred / f"s{i}.mha")
    serial = evaluate_folders(ref, pred, num_processes=1, verbose=False, mmd_patches_per_case=4)
    row = rows_by(serial)[("s0", "all")]
    assert row["ssim"] is None and "SSIM is undefined" in row["message"] and row["psnr"] is not None
    assert serial["settings"]["file_ending"] == ".mha" and (pred / "evaluation.csv").is_file()
    parallel = evaluate_folders(ref, pred, num_processes=2, verbose=False, mmd_patches_per_case=4)
    assert parallel == serial
    itself = evaluate_folders(ref, ref, output_file=tmp_path / "self.json", num_processes=1, verbose=False)
    assert itself["dataset"]["mmd2"] == 0.0 and serial["dataset"]["mmd2"] > 0


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_a_prediction_with_nan_fails(tmp_path, ending):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    prediction = blob(SHAPE, 0)
    prediction[3, 4, 5] = np.nan                   # ITK's NIfTI reader would hide it as 0
    write_sitk(blob(SHAPE, 0), ref / f"a{ending}")
    write_sitk(prediction, pred / f"a{ending}")
    results = evaluate_folders(ref, pred, num_processes=1, verbose=False, mmd=False)
    assert results["failed"][0]["case"] == "a" and "1 NaN/inf voxel" in results["failed"][0]["message"]


def test_bad_arguments_are_errors(folders):
    ref, pred = folders
    with pytest.raises(ValueError, match="data_range"):
        evaluate_folders(ref, pred, data_range=-1.0)
    with pytest.raises(FileNotFoundError, match="prediction folder"):
        evaluate_folders(ref, pred / "missing")


def test_a_prediction_extending_past_the_far_corner_is_cropped_but_a_shifted_one_fails(tmp_path):
    """SR of a partial last block: same origin, spacing, direction, larger shape -> the reference's voxels count.

    The files are RAS (canonical order = file order), so the extra voxels lie past the canonical far corner.
    """
    ras = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    reference = blob((15, 14, 13), 0)
    larger = np.pad(reference, ((0, 1), (0, 2), (0, 3)), constant_values=500.0)
    for case in ("grown", "shifted"):
        write_sitk(reference, ref / f"{case}.nii.gz", spacing=(1.0, 1.0, 2.0), origin=(3.0, 4.0, 5.0), direction=ras)
    write_sitk(larger, pred / "grown.nii.gz", spacing=(1.0, 1.0, 2.0), origin=(3.0, 4.0, 5.0), direction=ras)
    write_sitk(larger, pred / "shifted.nii.gz", spacing=(1.0, 1.0, 2.0), origin=(2.0, 4.0, 5.0), direction=ras)
    results = evaluate_folders(ref, pred, num_processes=1, verbose=False, mmd=False)
    rows = rows_by(results)
    assert rows[("grown", "all")]["status"] == "ok" and rows[("grown", "all")]["psnr"] is None   # identical: inf
    assert "cropped from [16, 16, 16] to the reference's [15, 14, 13]" in rows[("grown", "all")]["message"]
    assert rows[("shifted", "all")]["status"] == "failed" and "origin" in rows[("shifted", "all")]["message"]
