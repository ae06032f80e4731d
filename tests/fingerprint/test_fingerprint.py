"""Fingerprint: canonical spacings, shapes after crop-to-nonzero, foreground statistics against numpy."""
import json

import numpy as np
from synthetic_images import write_sitk

from diffens_auto.dataset import find_training_cases, load_dataset_json
from diffens_auto.fingerprint import extract_fingerprint, load_or_extract_fingerprint
from diffens_auto.fingerprint.residual import case_residual, pooled_residual_statistics


def test_fingerprint_of_hand_made_cases(tmp_path):
    folder = tmp_path / "Dataset001_Hand"
    (folder / "imagesTr").mkdir(parents=True)
    a = np.zeros((10, 12, 8), np.float32)
    a[2:6, 3:10, 1:4] = np.arange(4 * 7 * 3, dtype=np.float32).reshape(4, 7, 3) + 1
    # The second case is stored with flipped X and Y (an LPS-ordered file), spacing anisotropic in file axis 0.
    b = np.zeros((6, 9, 7), np.float32)
    b[1:5, 0:9, 2:3] = 7.0
    write_sitk(a, folder / "imagesTr" / "a_0000.nii.gz", spacing=(1.0, 1.0, 2.0))
    write_sitk(b, folder / "imagesTr" / "b_0000.nii.gz", spacing=(3.0, 1.0, 1.0),
               direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "numTraining": 2,
                                                     "file_ending": ".nii.gz"}))
    spec = load_dataset_json(folder)
    fp = extract_fingerprint(spec, find_training_cases(spec), num_processes=1)
    assert fp["case_identifiers"] == ["a", "b"]
    assert fp["shapes_before_crop"] == [[10, 12, 8], [6, 9, 7]]
    assert fp["shapes_after_crop"] == [[4, 7, 3], [4, 9, 1]]
    assert np.allclose(fp["spacings"], [[1, 1, 2], [3, 1, 1]])
    values = np.concatenate([a[a != 0], b[b != 0]]).astype(np.float64)
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    assert np.isclose(stats["mean"], values.mean()) and np.isclose(stats["std"], values.std())
    assert stats["min"] == 1.0 and stats["max"] == 84.0
    assert np.isclose(stats["percentile_99_5"], np.percentile(values, 99.5))
    assert np.isclose(stats["percentile_00_5"], np.percentile(values, 0.5))


def test_fingerprint_is_reused_unless_cases_change(small_raw_dataset, tmp_path):
    spec = load_dataset_json(small_raw_dataset)
    cases = find_training_cases(spec)
    out = tmp_path / "fp.json"
    first = load_or_extract_fingerprint(spec, cases, out, num_processes=2)
    assert json.loads(out.read_text()) == first
    out.write_text(json.dumps(dict(first, marker=1)))
    assert load_or_extract_fingerprint(spec, cases, out, num_processes=1)["marker"] == 1
    fewer = dict(list(cases.items())[:3])
    assert "marker" not in load_or_extract_fingerprint(spec, fewer, out, num_processes=1)
    assert len(json.loads(out.read_text())["case_identifiers"]) == 3


def test_residual_of_a_pattern_inside_the_blocks_against_hand_computed_values():
    # x-alternating 1 +- 0.5 inside every 2x2x2 block: block means 1 (a flat low-resolution image, so its
    # half_range falls back to |centre| = 1), up(A x) = 1 everywhere, residual +-0.5 on all 512 voxels
    x = np.arange(8)
    volume = np.broadcast_to((1 + 0.5 * (-1.0) ** x)[:, None, None], (8, 8, 8))
    measured = case_residual(volume, (2, 2, 2), (0.5, 99.5), np.random.default_rng(0))
    assert measured["count"] == 512 and measured["abs_max"] == 0.5
    assert np.isclose(measured["sum_squares"], 512 * 0.25)
    pooled = pooled_residual_statistics([measured, case_residual(np.ones((4, 4, 4)), (2, 2, 2), (0.5, 99.5),
                                                                 np.random.default_rng(0))])
    # a constant case adds 64 voxels of residual 0: rms = sqrt(128 / 576)
    assert np.isclose(pooled["rms"], np.sqrt(128 / 576)) and pooled["abs_max"] == 0.5
    assert pooled["num_voxels"] == 576


def test_sr_tasks_get_residual_statistics_and_a_new_task_re_extracts(small_raw_dataset, tmp_path):
    spec = load_dataset_json(small_raw_dataset)
    cases = find_training_cases(spec)
    out = tmp_path / "fp.json"
    fp = load_or_extract_fingerprint(spec, cases, out, num_processes=1)
    wanted = {str(t.target): [f"avgpool_{'x'.join(map(str, t.degradation.factor))}"]
              for t in spec.tasks.values() if t.degradation is not None}
    assert {c: sorted(v) for c, v in fp["residual_statistics_per_channel"].items()} == wanted
    for stats in (s for per_channel in fp["residual_statistics_per_channel"].values() for s in per_channel.values()):
        assert 0 < stats["rms"] <= stats["abs_percentile_99"] <= stats["abs_percentile_99_9"] <= stats["abs_max"]
    # a fingerprint without them (an older version's) is extracted again
    out.write_text(json.dumps({**fp, "residual_statistics_per_channel": {}, "marker": 1}))
    again = load_or_extract_fingerprint(spec, cases, out, num_processes=1)
    assert "marker" not in again and again["residual_statistics_per_channel"] == fp["residual_statistics_per_channel"]


def test_a_recon_task_adds_no_residual_statistics_and_reuses_the_fingerprint(small_raw_dataset, tmp_path):
    from diffens_auto.fingerprint.extractor import sr_degradations
    spec = load_dataset_json(small_raw_dataset)
    cases = find_training_cases(spec)
    out = tmp_path / "fp.json"
    fp = load_or_extract_fingerprint(spec, cases, out, num_processes=1)
    raw = json.loads((small_raw_dataset / "dataset.json").read_text())
    raw["tasks"]["recon"] = {"target": "T1", "inputs": [],
                             "degradation": {"type": "kspace", "mask": "uniform1d", "acceleration": 4}}
    (small_raw_dataset / "dataset.json").write_text(json.dumps(raw))
    with_recon = load_dataset_json(small_raw_dataset)
    # the priors predict the target itself: no residual to measure, so the SR statistics stay what they were
    assert sr_degradations(with_recon) == sr_degradations(spec) == {1: {"avgpool_2x2x2": [2, 2, 2]}}
    out.write_text(json.dumps({**fp, "marker": 1}))
    assert load_or_extract_fingerprint(with_recon, cases, out, num_processes=1)["marker"] == 1
