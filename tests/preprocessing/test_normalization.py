import hashlib

import numpy as np
import pytest
import torch

from diffens_auto.operators import kspace_mask
from diffens_auto.preprocessing.normalization import (case_normalization, degradation_key, degraded_params, denormalize,
                                                      kspace_params, mask_seed, normalize, params_from_lowres,
                                                      params_from_values, renormalize, select_params,
                                                      zero_filled_params)

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


# ------------------------------------------------------------------ a k-space task's scale


KSPACE = {"type": "kspace", "mask": "uniform1d", "acceleration": 3.0, "acs": 2, "slice_axis": 2, "noise_std": 0.0,
          "mask_per_slice": False}


def _object(shape=(12, 10, 8), seed=4):
    """A positive blob on a zero background (raw intensities)."""
    channel = np.zeros(shape)
    channel[2:10, 2:9, 1:7] = np.random.default_rng(seed).uniform(50, 400, (8, 7, 6))
    return channel


def _zero_filled_by_hand(x, mask, axes):
    """A⁺ A x with the centred orthonormal FFT over `axes`, written out with numpy."""
    k = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes)
    k = k * mask
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(k, axes=axes), axes=axes, norm="ortho"), axes=axes)


@pytest.mark.parametrize("degradation, axes", [
    (KSPACE, (0, 1)),
    (dict(KSPACE, mask="poisson", acceleration=2.5, slice_axis=0, mask_per_slice=True), (1, 2)),
])
def test_the_kspace_scale_is_the_p99_5_of_the_zero_filled_image_by_hand(degradation, axes):
    x = _object()
    mask = kspace_mask(degradation, x.shape, seed=7).numpy()
    assert 1 < mask.size / mask.sum() < 5                      # undersampled, not empty
    expected = np.percentile(np.abs(_zero_filled_by_hand(x, mask, axes)), 99.5)
    params = kspace_params(x, degradation, 7)
    assert params["center"] == 0.0
    assert params["half_range"] == pytest.approx(expected, rel=1e-10)
    # undersampling spreads the object's energy: the zero-filled image is dimmer than the object itself
    assert params["half_range"] < np.percentile(np.abs(x), 99.5)
    assert kspace_params(x, degradation, 8)["half_range"] != params["half_range"]


def test_a_fully_sampled_mask_gives_the_objects_own_percentile():
    x = _object()
    full = dict(KSPACE, acceleration=1.0, acs=0)                # every line: A⁺ A = identity
    assert kspace_params(x, full, 0) == pytest.approx({"center": 0.0, "half_range": np.percentile(x, 99.5)})


def test_zero_filled_params_take_the_magnitude_and_guard_empty_images():
    image = torch.tensor([[3.0 + 4.0j, 0.0], [0.0, -1.0]], dtype=torch.complex64)
    assert zero_filled_params(image, (0.5, 100.0)) == {"center": 0.0, "half_range": pytest.approx(5.0)}
    assert zero_filled_params(np.zeros((3, 3, 3))) == {"center": 0.0, "half_range": 1.0}
    assert zero_filled_params(np.array([0.0] * 999 + [2.0])) == {"center": 0.0, "half_range": 2.0}


def test_case_normalization_stores_the_kspace_scale_of_the_case_seeded_by_its_id():
    plans = {"normalization": {"percentiles": [0.5, 99.5]},
             "tasks": {"recon": {"target": 1, "inputs": [], "degradation": KSPACE},
                       "sr": {"target": 1, "inputs": [], "degradation": {"type": "avgpool", "factor": [2, 2, 2]}}}}
    data = np.stack([_object(seed=1), _object(seed=2)])
    mask = data[1] != 0
    norm = case_normalization(data, mask, data, plans, case_id="Ellipses_003")
    key = degradation_key(KSPACE)
    assert set(norm["1"]["degraded"]) == {key, "avgpool_2x2x2"} and norm["0"]["degraded"] == {}
    assert norm["1"]["degraded"][key] == kspace_params(data[1], KSPACE, mask_seed("Ellipses_003"))
    assert select_params(norm["1"], f"degraded:{key}")["center"] == 0.0
    # a stable hash of the id (Python's hash() differs between runs), so every run draws the same mask
    digest = int.from_bytes(hashlib.sha256(b"Ellipses_003").digest(), "big")
    assert mask_seed("Ellipses_003") == int(np.random.SeedSequence([0, digest]).generate_state(2)[0])
    assert mask_seed("Ellipses_003") != mask_seed("Ellipses_004")
