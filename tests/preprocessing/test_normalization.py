import numpy as np
import pytest

from diffens_auto.preprocessing.normalization import (case_normalization, degradation_key, degraded_params, denormalize,
                                                      normalize, params_from_lowres, params_from_values, renormalize,
                                                      select_params)

PLANS = {"normalization": {"scheme": "percentile_affine", "percentiles": [0.5, 99.5],
                           "dataset": {"1": {"center": 500.0, "half_range": 400.0}}},
         "tasks": {"sr": {"target": 1, "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}},
                   "mt": {"target": 1, "inputs": [0], "degradation": None}}}


def test_foreground_percentiles_map_to_minus_one_and_one():
    rng = np.random.default_rng(0)
    data = np.zeros((2, 16, 16, 16))
    mask = np.zeros((16, 16, 16), bool)
    mask[2:14, 3:13, 4:12] = True
    data[0][mask] = rng.gamma(3.0, 100.0, mask.sum())
    data[1][mask] = rng.normal(50, 10, mask.sum())
    norm = case_normalization(data, mask, data, PLANS)
    for c in range(2):
        x = normalize(data[c], norm[str(c)]["case"])
        lo, hi = np.percentile(x[mask].astype(np.float64), [0.5, 99.5])
        assert lo == pytest.approx(-1, abs=1e-5) and hi == pytest.approx(1, abs=1e-5)
        assert np.allclose(x[~mask], -norm[str(c)]["case"]["center"] / norm[str(c)]["case"]["half_range"])
        assert np.allclose(denormalize(x, norm[str(c)]["case"]), data[c], atol=1e-4 * np.abs(data[c]).max())
    assert set(norm["1"]["degraded"]) == {"avgpool_4x4x4"} and norm["0"]["degraded"] == {}
    assert norm["1"]["dataset"] == {"center": 500.0, "half_range": 400.0} and "dataset" not in norm["0"]


def test_constant_and_empty_foreground_are_guarded():
    flat = params_from_values(np.full(100, 7.0))
    assert flat == {"center": 7.0, "half_range": 7.0}  # foreground -> 0, background (0) -> -1
    assert params_from_values(np.zeros(10)) == {"center": 0.0, "half_range": 1.0}
    assert params_from_values(np.array([])) == {"center": 0.0, "half_range": 1.0}


def test_degraded_params_come_from_block_means():
    rng = np.random.default_rng(1)
    channel = np.zeros((16, 12, 8))
    channel[2:14, 1:11, 1:7] = rng.uniform(100, 200, (12, 10, 6))
    blocks = channel.reshape(4, 4, 3, 4, 2, 4).mean(axis=(1, 3, 5))
    expected = params_from_values(blocks[blocks != 0], (0.5, 99.5))
    assert degraded_params(channel, (4, 4, 4)) == pytest.approx(expected)
    assert params_from_lowres(blocks) == pytest.approx(expected)
    assert degradation_key({"type": "avgpool", "factor": [4, 4, 2]}) == "avgpool_4x4x2"


def test_degraded_params_average_partial_blocks_over_their_real_voxels():
    channel = np.zeros((6, 4, 4))
    channel[:, 1:3, 1:3] = np.arange(6.0)[:, None, None] + 1
    # Blocks of 4 along X: voxels 1..4 -> 2.5 and the partial block 5, 6 -> 5.5 (as the AvgPoolSR operator does).
    lowres = np.array([2.5 * 4 / 16, 5.5 * 4 / 16])
    assert degraded_params(channel, (4, 4, 4)) == pytest.approx(params_from_lowres(lowres))


def test_renormalize_switches_parameter_sets_exactly():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1000, 1000)
    a, b = {"center": 400.0, "half_range": 350.0}, {"center": 380.5, "half_range": 410.25}
    xa = normalize(x, a)
    assert np.allclose(renormalize(xa, a, b), normalize(x, b), atol=2e-6)
    x64 = (x - a["center"]) / a["half_range"]
    assert np.allclose(renormalize(renormalize(x64, a, b), b, a), x64, rtol=0, atol=1e-13)
    torch = pytest.importorskip("torch")
    t = renormalize(torch.from_numpy(xa), a, b)
    assert t.dtype == torch.float32 and np.allclose(t.numpy(), normalize(x, b), atol=2e-6)


def test_select_params():
    entry = {"case": {"center": 1.0, "half_range": 2.0},
             "degraded": {"avgpool_4x4x4": {"center": 3.0, "half_range": 4.0}}}
    assert select_params(entry, "case") == {"center": 1.0, "half_range": 2.0}
    assert select_params(entry, "degraded:avgpool_4x4x4") == {"center": 3.0, "half_range": 4.0}
    assert select_params(entry, "degraded") == {"center": 3.0, "half_range": 4.0}
    assert select_params(entry, {"center": 5, "half_range": 6}) == {"center": 5.0, "half_range": 6.0}
    with pytest.raises(KeyError, match="available"):
        select_params(entry, "dataset")
