"""Unbiased MMD² against a direct double loop; median-heuristic bandwidth; patch sampling."""
import math

import numpy as np
import pytest

from diffens_auto.evaluation import mmd2
from diffens_auto.evaluation.mmd import case_rng, extract_patches, median_heuristic_bandwidth, sample_patch_corners


def direct_mmd2(x, y, sigma):
    """Gretton et al. 2012, Eq. 3, term by term."""
    def k(a, b):
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / (2 * sigma ** 2))
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def direct_paired_mmd2(x, y, sigma):
    """Gretton et al. 2012, Lemma 6: the mean of h(z_i, z_j) over i != j."""
    def k(a, b):
        return math.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / (2 * sigma ** 2))
    m = len(x)
    return sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i])
               for i in range(m) for j in range(m) if i != j) / (m * (m - 1))


def direct_median_distance(x, y):
    z = list(x) + list(y)
    return float(np.median([math.dist(z[i], z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]))


def test_one_dimensional_samples_by_hand():
    x, y = np.array([[0.0], [1.0], [3.0]]), np.array([[1.0], [2.0], [5.0], [6.0]])
    # Pooled distances: 21 pairs; their median is 2.
    assert median_heuristic_bandwidth(x, y) == pytest.approx(2.0)
    assert mmd2(x, y) == pytest.approx(direct_mmd2(x.tolist(), y.tolist(), 2.0), abs=1e-14)
    assert mmd2(x, y, bandwidth=0.7) == pytest.approx(direct_mmd2(x.tolist(), y.tolist(), 0.7), abs=1e-14)
    assert mmd2(x.ravel(), y.ravel()) == mmd2(x, y)                  # a 1D array is a sample of scalars


def test_two_dimensional_samples_against_the_double_loop():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((7, 2)), rng.standard_normal((9, 2)) + [0.5, 0.0]
    sigma = direct_median_distance(x, y)
    assert median_heuristic_bandwidth(x, y) == pytest.approx(sigma, rel=1e-12)
    assert mmd2(x, y) == pytest.approx(direct_mmd2(x.tolist(), y.tolist(), sigma), abs=1e-13)
    y = y[:7]
    sigma = direct_median_distance(x, y)
    assert mmd2(x, y, paired=True) == pytest.approx(direct_paired_mmd2(x.tolist(), y.tolist(), sigma), abs=1e-13)


def test_identical_samples_are_near_zero_and_different_ones_positive():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 5))
    same = mmd2(x, x.copy())
    assert -0.02 < same <= 1e-12                  # Eq. 3's cross term keeps k(x_i, x_i) = 1
    assert mmd2(x, x.copy(), paired=True) == 0.0
    assert abs(mmd2(x, x + 0.01 * rng.standard_normal(x.shape), paired=True)) < 1e-3
    assert abs(mmd2(x, rng.standard_normal((200, 5)))) < 0.02
    assert mmd2(x, rng.standard_normal((200, 5)) + 2.0) > 0.3


def test_too_few_points_or_bad_bandwidth_are_errors():
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="as many points"):
        mmd2(np.zeros((2, 3)), np.zeros((4, 3)), paired=True)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(np.zeros((2, 3)), np.ones((2, 3)), bandwidth=0.0)
    assert median_heuristic_bandwidth(np.zeros((3, 2)), np.zeros((3, 2))) == 1.0   # all points equal


def test_patches_sit_in_the_foreground_and_inside_the_volume():
    foreground = np.zeros((20, 16, 12), bool)
    foreground[0:3, 10:16, 5:7] = True             # touches the faces: patches are shifted inside
    corners = sample_patch_corners(foreground, (8, 8, 8), 50, case_rng("case_1", 0))
    assert corners.shape == (50, 3)
    assert np.all(corners >= 0) and np.all(corners + 8 <= np.array(foreground.shape))
    assert np.array_equal(corners, sample_patch_corners(foreground, (8, 8, 8), 50, case_rng("case_1", 0)))
    assert not np.array_equal(corners, sample_patch_corners(foreground, (8, 8, 8), 50, case_rng("case_2", 0)))
    volume = np.arange(20 * 16 * 12, dtype=np.float32).reshape(20, 16, 12)
    patches = extract_patches(volume, corners[:2], (8, 8, 8))
    c = corners[0]
    assert patches.shape == (2, 512)
    assert np.array_equal(patches[0], volume[c[0]:c[0] + 8, c[1]:c[1] + 8, c[2]:c[2] + 8].ravel())
    assert sample_patch_corners(np.ones((6, 16, 16), bool), (8, 8, 8), 5, case_rng("a", 0)) is None
