"""PSNR, MAE and MACE against values worked out by hand, inside and outside masks."""
import math

import numpy as np
import pytest

from diffens_auto.evaluation import mace, mae, psnr
from diffens_auto.evaluation.evaluate_case import regions


def test_psnr_by_hand():
    reference = np.zeros((4, 4, 4), np.float32)
    reference[0, 0, 0] = 10.0                      # data range 10 - 0
    prediction = reference.copy()
    prediction[1, :2, :] += 1.0                    # 8 voxels off by 1: MSE = 8 / 64
    assert psnr(reference, prediction) == pytest.approx(10 * math.log10(100 / 0.125), abs=1e-12)   # 29.03 dB
    assert psnr(reference, prediction, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.125), abs=1e-12)


def test_psnr_in_a_mask_uses_the_mask_voxels_and_range():
    reference = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    prediction = reference + np.array([2, 0, 0, 0, 0, 0, 0, 3.0]).reshape(2, 2, 2)
    mask = np.zeros((2, 2, 2), bool)
    mask.flat[[0, 1, 2]] = True                    # values 0, 1, 2: range 2, errors 2, 0, 0: MSE 4/3
    assert psnr(reference, prediction, mask=mask) == pytest.approx(10 * math.log10(4 / (4 / 3)), abs=1e-12)


def test_psnr_identical_is_inf_and_constant_reference_is_nan():
    reference = np.random.default_rng(0).random((3, 3, 3))
    assert psnr(reference, reference) == math.inf
    assert math.isnan(psnr(np.ones((3, 3, 3)), np.zeros((3, 3, 3))))
    assert math.isnan(psnr(reference, reference, mask=np.zeros((3, 3, 3), bool)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(reference, reference, data_range=0)


def test_mae_by_hand():
    reference = np.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 2, 1)
    prediction = np.array([2.0, 2.0, 1.0, 4.5]).reshape(2, 2, 1)
    assert mae(reference, prediction) == pytest.approx((1 + 0 + 2 + 0.5) / 4, abs=1e-15)
    assert mae(reference, prediction, mask=reference > 2.5) == pytest.approx((2 + 0.5) / 2, abs=1e-15)


def test_mace_by_its_formula():
    reference = np.array([1.0, 2.0, 3.0, 4.0]).reshape(2, 2, 1)
    mean = np.array([1.5, 2.0, 2.0, 6.0]).reshape(2, 2, 1)      # |y - mu| = 0.5, 0, 1, 2
    std = np.array([0.5, 1.0, 0.0, 1.0]).reshape(2, 2, 1)       # |sigma - |y - mu|| = 0, 1, 1, 1
    assert mace(reference, mean, std) == pytest.approx(0.75, abs=1e-15)
    assert mace(reference, mean, std, mask=np.array([True, False, False, True]).reshape(2, 2, 1)) == 0.5
    rng = np.random.default_rng(1)
    y, mu, sigma = rng.random((3, 4, 5)), rng.random((3, 4, 5)), rng.random((3, 4, 5))
    by_hand = sum(abs(s - abs(a - b)) for a, b, s in zip(y.ravel(), mu.ravel(), sigma.ravel())) / y.size
    assert mace(y, mu, sigma) == pytest.approx(by_hand, rel=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="different shapes"):
        mae(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="mask shape"):
        mae(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), mask=np.ones((2, 2), bool))


def test_regions_without_and_with_a_label_map():
    reference = np.array([0.0, 1.0, 2.0, 0.0]).reshape(2, 2, 1)
    names = [(name, None if r is None else r.ravel().tolist()) for name, r in regions(reference, None)]
    assert names == [("all", None), ("foreground", [False, True, True, False])]
    labels = np.array([0, 2, 1, 2.0]).reshape(2, 2, 1)
    found = {name: r.ravel().tolist() for name, r in regions(reference, labels)}
    assert found == {"all": [False, True, True, True], "label_1": [False, False, True, False],
                     "label_2": [False, True, False, True]}
