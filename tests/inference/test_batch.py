"""Batch folders: bad cases reported and skipped, no partial files, resumption after a kill, parts."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.operators import degrade_image

SR = {"type": "avgpool", "factor": [4, 4, 4]}


def _demo_file(demo, case: str, channel: int):
    return demo.raw / "Dataset900_DemoBrain" / "imagesTr" / f"{case}_{channel:04d}.nii.gz"


def _lowres_flair(demo, case: str, path):
    """The demo case's FLAIR degraded 4x, written with its low-resolution geometry."""
    array, props = read_image(_demo_file(demo, case, 3))
    lowres, lowres_props = degrade_image(array, props, SR)
    write_image(lowres, lowres_props, path)


@pytest.fixture
def bad_batch(trained_demo, tmp_path):
    """Task 'both' inputs: one good case, then a corrupt file, a 4D file, a NaN-filled file, a missing channel."""
    folder = tmp_path / "in"
    folder.mkdir()
    _lowres_flair(trained_demo, "DemoBrain_000", folder / "good_0003.nii.gz")
    t1ce, t1ce_props = read_image(_demo_file(trained_demo, "DemoBrain_000", 1))
    write_image(t1ce, t1ce_props, folder / "good_0001.nii.gz")
    for case in ("corrupt", "fourd", "nans"):
        write_image(t1ce, t1ce_props, folder / f"{case}_0001.nii.gz")
    _lowres_flair(trained_demo, "DemoBrain_000", folder / "corrupt_0003.nii.gz")
    data = (folder / "corrupt_0003.nii.gz").read_bytes()
    (folder / "corrupt_0003.nii.gz").write_bytes(data[: len(data) // 2])
    import SimpleITK as sitk
    four = sitk.GetImageFromArray(np.ones((2, 8, 8, 8), np.float32), isVector=False)
    sitk.WriteImage(four, str(folder / "fourd_0003.nii.gz"))
    write_sitk(np.full((8, 8, 8), np.nan, np.float32), folder / "nans_0003.nii.gz", spacing=(8.0, 8.0, 8.0))
    _lowres_flair(trained_demo, "DemoBrain_001", folder / "lonely_0003.nii.gz")
    return folder


def _run_cli(args, env_folders, **kwargs):
    env = {**os.environ, **{k: str(v) for k, v in env_folders.items()}, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "diffens_auto.run.predict", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_bad_cases_are_reported_and_skipped_while_the_good_case_is_written(trained_demo, bad_batch, tmp_path):
    out = tmp_path / "out"
    process = _run_cli(["-i", bad_batch, "-o", out, "-d", 900, "-t", "both", "-c", "2d_axial", "--steps", 2,
                        "--quiet"], trained_demo.folders)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "1 predicted, 0 skipped, 4 failed" in stdout
    summary = json.loads((out / "prediction_summary.json").read_text())
    status = {row["case"]: (row["status"], row["message"]) for row in summary["cases"]}
    assert status["good"][0] == "done" and (out / "good.nii.gz").is_file()
    assert status["corrupt"][0] == "failed" and "corrupt_0003.nii.gz" in status["corrupt"][1]
    assert status["fourd"][0] == "failed" and "fourd_0003.nii.gz" in status["fourd"][1]
    assert "4D" in status["fourd"][1] or "dimension" in status["fourd"][1].lower()
    assert status["nans"][0] == "failed" and "NaN" in status["nans"][1]
    assert status["lonely"][0] == "failed" and "lonely_0001.nii.gz" in status["lonely"][1]
    for case in ("corrupt", "fourd", "nans", "lonely"):
        assert f"FAILED {case}" in stderr
    # no partial file under a final name, and no temporary file left behind
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "prediction_settings.json",
                                                     "prediction_summary.csv", "prediction_summary.json"]


def test_continue_prediction_after_a_kill_finishes_the_rest_without_redoing_finished_cases(trained_demo, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cases = [f"DemoBrain_00{i}" for i in range(4)]
    for case in cases:
        _lowres_flair(trained_demo, case, folder / f"{case}_0003.nii.gz")
    out = tmp_path / "out"
    process = _run_cli(["-i", folder, "-o", out, "-d", 900, "-t", "sr", "-c", "3d_ensembler", "--steps", 25,
                        "--quiet"], trained_demo.folders, start_new_session=True)
    deadline = time.time() + 240
    while not (out / "DemoBrain_000.nii.gz").is_file():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("DemoBrain_*.nii.gz")}
    assert 1 <= len(finished) < len(cases)

    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable, value in trained_demo.folders.items():
            monkeypatch.setenv(variable, str(value))
        # the same settings as the killed run: --continue_prediction refuses outputs made with others
        predictor = DiffensPredictor(steps=25, progress=False).initialize_from_trained_model(900, "sr", "3d_ensembler")
        summary = predictor.predict_from_files(folder, out, continue_prediction=True)
    status = {row["case"]: row["status"] for row in summary["cases"]}
    assert {c for c, s in status.items() if s == "skipped"} == {n[: -len(".nii.gz")] for n in finished}
    assert summary["done"] == len(cases) - len(finished) and summary["failed"] == 0
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime
    assert sorted(p.name for p in out.glob("DemoBrain_*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    # the killed run may leave a hidden temporary file; it never stands under a final name
    assert not [p for p in out.iterdir() if not p.name.startswith(".") and ".tmp" in p.name]


def test_two_parts_cover_the_folder_exactly_once(trained_demo_folders, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        write_sitk(blob((5, 6, 4), i) * 2, folder / f"c{i}.nii.gz", spacing=(8.0, 8.0, 8.0))
    predicted = []
    for part in (0, 1):
        predictor = DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
        summary = predictor.predict_from_files(folder, tmp_path / "out", num_parts=2, part_id=part)
        assert (tmp_path / "out" / f"prediction_summary_part_{part}_of_2.json").is_file()
        predicted += [row["case"] for row in summary["cases"] if row["status"] == "done"]
    assert sorted(predicted) == [f"c{i}" for i in range(5)]
    assert len(predicted) == len(set(predicted))


def test_unreadable_input_folder_and_bad_part_are_clear_errors(trained_demo_folders, tmp_path):
    from diffens_auto.dataset.dataset_json import DatasetError
    from diffens_auto.inference.model import PredictionSetupError
    predictor = DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
    with pytest.raises(DatasetError, match="input folder not found"):
        predictor.predict_from_files(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "in").mkdir()
    write_sitk(blob((5, 6, 4), 0), tmp_path / "in" / "a.nii.gz")
    with pytest.raises(PredictionSetupError, match="part_id must be in 0..num_parts-1"):
        predictor.predict_from_files(tmp_path / "in", tmp_path / "out", num_parts=2, part_id=2)
    with pytest.raises(PredictionSetupError, match="is the input folder"):
        predictor.predict_from_files(tmp_path / "in", tmp_path / "in")


def test_gzip_garbage_is_reported_not_raised(trained_demo_folders, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    with gzip.open(folder / "junk.nii.gz", "wb") as f:
        f.write(b"not an image at all")
    write_sitk(blob((5, 6, 4), 0) * 2, folder / "fine.nii.gz", spacing=(8.0, 8.0, 8.0))
    predictor = DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
    summary = predictor.predict_from_files(folder, tmp_path / "out")
    status = {row["case"]: row for row in summary["cases"]}
    assert status["fine"]["status"] == "done"
    assert status["junk"]["status"] == "failed" and "junk.nii.gz" in status["junk"]["message"]


def test_continuing_with_other_settings_is_refused_and_stale_temporary_files_are_removed(trained_demo_folders,
                                                                                        tmp_path):
    from diffens_auto.inference.model import PredictionSetupError
    folder = tmp_path / "in"
    folder.mkdir()
    write_sitk(blob((5, 6, 4), 1) * 2, folder / "c.nii.gz", spacing=(8.0, 8.0, 8.0))
    out = tmp_path / "out"
    DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "sr", "2d_axial") \
        .predict_from_files(folder, out)
    (out / ".c.nii.gz.abc123.tmp.nii.gz").write_bytes(b"partial")
    other_seed = DiffensPredictor(steps=1, seed=5, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
    with pytest.raises(PredictionSetupError, match=r"other settings \(seed: 0 then, 5 now\)"):
        other_seed.predict_from_files(folder, out, continue_prediction=True)
    same = DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
    assert same.predict_from_files(folder, out, continue_prediction=True)["skipped"] == 1
    assert not (out / ".c.nii.gz.abc123.tmp.nii.gz").exists()


def test_an_all_zero_input_of_a_two_input_task_is_named(trained_demo, bad_batch, tmp_path):
    t1ce, props = read_image(bad_batch / "good_0001.nii.gz")
    write_image(np.zeros_like(t1ce), props, bad_batch / "good_0001.nii.gz")
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable, value in trained_demo.folders.items():
            monkeypatch.setenv(variable, str(value))
        predictor = DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "both", "2d_axial")
        summary = predictor.predict_from_files(bad_batch, tmp_path / "out")
    row = next(r for r in summary["cases"] if r["case"] == "good")
    assert row["status"] == "failed" and "good_0001.nii.gz: every voxel is 0" in row["message"]


def test_the_plans_consistency_setting_is_the_default(trained_demo_folders):
    predictor = DiffensPredictor(steps=1, progress=False).initialize_from_trained_model(900, "sr", "2d_axial")
    assert predictor.consistency is True
    predictor.model.plans["diffusion"]["consistency_projection"] = False
    assert predictor.use_model(predictor.model).consistency is False
    forced = DiffensPredictor(steps=1, consistency=True, progress=False).initialize_from_trained_model(900, "sr",
                                                                                                       "2d_axial")
    forced.model.plans["diffusion"]["consistency_projection"] = False
    assert forced.use_model(forced.model).consistency is True


def test_start_timestep_truncates_the_chain_and_a_timestep_beyond_the_schedule_is_refused(trained_demo_folders):
    from diffens_auto.inference.model import PredictionSetupError
    predictor = DiffensPredictor(steps=4, start_timestep=300, progress=False)
    predictor.initialize_from_trained_model(900, "sr", "2d_axial")
    assert int(predictor.sampler.timesteps[0]) == 300 and "300.." in predictor.settings()["sampler"]
    with pytest.raises(PredictionSetupError, match="--start_timestep"):
        DiffensPredictor(steps=4, start_timestep=5000, progress=False).initialize_from_trained_model(900, "sr",
                                                                                                     "2d_axial")


def test_sampler_flag_combinations_are_checked():
    from diffens_auto.inference.model import PredictionSetupError
    for kwargs, message in (({"eta": -1.0}, "eta is >= 0"), ({"eta": 0.5, "sampler": "ddpm"}, "ddim sampler only"),
                            ({"slice_batch_size": 0}, "at least 1"), ({"num_samples": 0}, "at least 1"),
                            ({"start_timestep": -1}, "timestep >= 0")):
        with pytest.raises(PredictionSetupError, match=message):
            DiffensPredictor(**kwargs)
