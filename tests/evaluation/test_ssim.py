"""3D SSIM equals scikit-image's structural_similarity with the same settings, borders included."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from diffens_auto.evaluation import ssim3d
from diffens_auto.evaluation.ssim import interior, local_moments, mean_ssim, window_size


def skimage_ssim(a, b, data_range, full=False):
    return structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, full=full)


def pairs():
    rng = np.random.default_rng(0)
    noise = rng.random((24, 24, 24))
    smooth = gaussian_filter(rng.standard_normal((24, 24, 24)), 3) * 50 + 100
    yield noise, noise + 0.2 * rng.standard_normal(noise.shape)
    yield smooth, 0.8 * smooth + 5 + rng.standard_normal(smooth.shape)
    uneven = rng.random((13, 17, 11)) * 3 - 1     # the smallest side equals the window
    yield uneven, np.roll(uneven, 2, axis=1)


def test_window_is_eleven_voxels():
    assert window_size() == 11


@pytest.mark.parametrize("index", range(3))
def test_matches_skimage_with_the_reference_range(index):
    a, b = list(pairs())[index]
    expected = skimage_ssim(a, b, data_range=a.max() - a.min())
    assert ssim3d(a, b) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("index", range(3))
def test_matches_skimage_with_a_given_range(index):
    a, b = list(pairs())[index]
    assert ssim3d(a, b, data_range=7.5) == pytest.approx(skimage_ssim(a, b, 7.5), abs=1e-9)


def test_float32_input_agrees_to_single_precision():
    a, b = list(pairs())[1]
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert ssim3d(a32, b32, data_range=100.0) == pytest.approx(skimage_ssim(a, b, 100.0), abs=1e-6)


def test_masked_ssim_is_the_mean_of_the_map_inside_mask_and_interior():
    a, b = list(pairs())[1]
    _, full_map = skimage_ssim(a, b, data_range=10.0, full=True)
    mask = np.zeros(a.shape, bool)
    mask[2:15, 3:20, 6:24] = True                 # reaches into the border strip, which does not count
    inside = mask & interior(a.shape, 11)
    assert inside.sum() < mask.sum()
    assert ssim3d(a, b, data_range=10.0, mask=mask) == pytest.approx(full_map[inside].mean(), abs=1e-9)
    border_only = np.zeros(a.shape, bool)
    border_only[:5] = True
    assert np.isnan(mean_ssim(local_moments(a, b), 10.0, border_only))


def test_identical_volumes_give_one_and_small_volumes_are_refused():
    a = list(pairs())[0][0]
    assert ssim3d(a, a) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="window size"):
        ssim3d(np.zeros((12, 12, 10)), np.zeros((12, 12, 10)), data_range=1.0)
