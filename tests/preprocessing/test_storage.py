"""preprocess_dataset on disk: layout, atomic files, resume after an interruption, clean, failures."""
import json

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk

from diffens_auto.imageio import read_image
from diffens_auto.preprocessing import (PreprocessingError, case_paths, export_prediction, finished_cases,
                                        is_case_finished, load_case, load_mask_original, preprocess_dataset,
                                        preprocessing_settings, preprocessor)

PLANS = {"plans_name": "diffensPlans", "data_identifier": "diffensPlans", "target_spacing": [1.0, 1.0, 1.0],
         "channel_names": {"0": "FLAIR"},
         "resampling": {"order": 3, "order_z": 0, "anisotropy_threshold": 3.0},
         "normalization": {"scheme": "percentile_affine", "percentiles": [0.5, 99.5]},
         "tasks": {"sr": {"target": 0, "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}}}}


def write_volume(path, values, spacing=(1.0, 1.0, 1.5)):
    image = sitk.GetImageFromArray(np.transpose(values.astype(np.float32), (2, 1, 0)))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def make_cases(folder, n=3, zero_case=None):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(n):
        values = np.zeros((20, 18, 12))
        if i != zero_case:
            values[3:17, 2:15, 2:10] = rng.uniform(50, 150) + rng.normal(0, 10, (14, 13, 8))
        cases[f"case_{i:03d}"] = [write_volume(folder / f"case_{i:03d}_0000.nii.gz", values)]
    return cases


def file_versions(folder):
    # The inode tells a rewritten (renamed-over) file from an untouched one even on coarse-mtime file systems.
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def count_calls(monkeypatch):
    calls = []
    original = preprocessor.preprocess_case
    monkeypatch.setattr(preprocessor, "preprocess_case", lambda files, plans, case_id, **kw:
                        calls.append(case_id) or original(files, plans, case_id, **kw))
    return calls


def test_layout_and_load_case(tmp_path):
    cases = make_cases(tmp_path / "raw")
    out = tmp_path / "pp" / PLANS["data_identifier"]
    summary = preprocess_dataset(cases, PLANS, out, num_processes=1, verbose=False)
    assert summary["preprocessed"] == sorted(cases) and summary["skipped"] == []
    expected = {f"{c}{suffix}" for c in cases for suffix in (".b2nd", "_mask.b2nd", "_mask_original.b2nd", ".json")}
    assert {p.name for p in out.iterdir()} == expected  # and no temporary files
    assert finished_cases(out) == sorted(cases)

    data, mask, props = load_case(out, "case_001", mmap=True)
    assert isinstance(data, blosc2.NDArray) and data.dtype == np.float32 and data.shape[0] == 1
    assert mask.dtype == np.uint8 and mask.shape == data.shape[1:]
    assert props["shape_after_resampling"] == list(data.shape[1:])
    axial = data[0, :, :, 5]
    assert isinstance(axial, np.ndarray) and axial.shape == data.shape[1:3]
    data_np, mask_np, _ = load_case(out, "case_001", mmap=False)
    assert isinstance(data_np, np.ndarray) and np.array_equal(data_np, data[...])
    assert props == json.loads(case_paths(out, "case_001")["properties"].read_text())

    mask_original = load_mask_original(out, "case_001")
    assert mask_original.shape == tuple(props["shape_after_crop"]) and mask_original.dtype == np.uint8
    export_prediction(data_np[0], props, 0, tmp_path / "back.nii.gz", mask_original=mask_original)
    reference, _ = read_image(cases["case_001"][0])
    back, _ = read_image(tmp_path / "back.nii.gz")
    assert back.shape == reference.shape and np.all(back[reference == 0] == 0)
    with pytest.raises(FileNotFoundError, match="case_999.*Fix"):
        load_case(out, "case_999")


def test_resume_recomputes_only_the_interrupted_case(tmp_path, monkeypatch):
    cases = make_cases(tmp_path / "raw")
    out = tmp_path / "pp"
    preprocess_dataset(cases, PLANS, out, num_processes=1, verbose=False)
    before = file_versions(out)
    case_paths(out, "case_001")["properties"].unlink()  # interrupted before its JSON landed
    (out / ".case_001.b2nd.abc123.tmp.b2nd").write_bytes(b"half-written")  # left by a killed worker
    calls = count_calls(monkeypatch)
    summary = preprocess_dataset(cases, PLANS, out, num_processes=1, verbose=False)
    assert calls == ["case_001"]
    assert summary["preprocessed"] == ["case_001"] and summary["skipped"] == ["case_000", "case_002"]
    after = file_versions(out)
    assert set(after) == set(before)  # the temporary file is gone, the JSON is back
    for name, mtime in before.items():
        assert (after[name] == mtime) == (not name.startswith("case_001")), name

    calls.clear()
    preprocess_dataset(cases, PLANS, out, num_processes=1, verbose=False)
    assert calls == []
    preprocess_dataset(cases, PLANS, out, num_processes=1, clean=True, verbose=False)
    assert calls == sorted(cases)
    assert set(file_versions(out)) == set(before)


def test_changed_settings_recompute_cases(tmp_path, monkeypatch):
    cases = make_cases(tmp_path / "raw", n=2)
    out = tmp_path / "pp"
    preprocess_dataset(cases, PLANS, out, num_processes=1, verbose=False)
    changed = {**PLANS, "target_spacing": [1.0, 1.0, 1.25]}
    assert is_case_finished(out, "case_000", preprocessing_settings(PLANS))
    assert not is_case_finished(out, "case_000", preprocessing_settings(changed))
    calls = count_calls(monkeypatch)
    preprocess_dataset(cases, changed, out, num_processes=1, verbose=False)
    assert calls == sorted(cases)


def test_a_failing_case_is_reported_and_the_others_stay(tmp_path):
    cases = make_cases(tmp_path / "raw", zero_case=1)
    out = tmp_path / "pp"
    with pytest.raises(PreprocessingError, match=r"(?s)1 of 3.*case case_001 \(files: .*case_001_0000\.nii\.gz\)"
                                                 r".*every voxel.*re-run"):
        preprocess_dataset(cases, PLANS, out, num_processes=1, verbose=False)
    assert finished_cases(out) == ["case_000", "case_002"]
    assert not any(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.slow
def test_worker_processes_give_the_same_result(tmp_path):
    cases = make_cases(tmp_path / "raw")
    inline, pooled = tmp_path / "inline", tmp_path / "pooled"
    preprocess_dataset(cases, PLANS, inline, num_processes=1, verbose=False)
    summary = preprocess_dataset(cases, PLANS, pooled, num_processes=2, verbose=False)
    assert summary["preprocessed"] == sorted(cases)
    for case_id in cases:
        a, b = load_case(inline, case_id, mmap=False), load_case(pooled, case_id, mmap=False)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
