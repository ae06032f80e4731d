"""Undersampling masks: achieved acceleration, centred ACS region, determinism by seed, variable density."""
import pytest
import torch

from diffens_auto.operators import achieved_acceleration, poisson_disc_mask, uniform_1d_mask


@pytest.mark.parametrize("pattern", ["random", "equispaced"])
@pytest.mark.parametrize("shape, axis, acceleration, acs", [((32, 96), 1, 4, 12), ((10, 128, 6), 1, 8, 8),
                                                            ((100, 20), 0, 3, 10)])
def test_uniform_1d_mask(shape, axis, acceleration, acs, pattern):
    mask = uniform_1d_mask(shape, acceleration, acs, axis=axis, seed=7, pattern=pattern)
    assert mask.shape == shape and mask.dtype == torch.bool
    n = shape[axis]
    lines = mask.movedim(axis, 0).reshape(n, -1)
    # Whole lines: every line is sampled entirely or not at all.
    assert torch.all(lines.all(dim=1) == lines.any(dim=1))
    assert lines[:, 0].sum() == round(n / acceleration)
    assert abs(achieved_acceleration(mask) / acceleration - 1) < 0.05
    assert lines[n // 2 - acs // 2: n // 2 - acs // 2 + acs, 0].all()  # ACS around the DC index n // 2
    assert torch.equal(mask, uniform_1d_mask(shape, acceleration, acs, axis=axis, seed=7, pattern=pattern))
    assert not torch.equal(mask, uniform_1d_mask(shape, acceleration, acs, axis=axis, seed=8, pattern=pattern))


@pytest.mark.parametrize("shape, acceleration, acs", [((64, 64), 4, 12), ((64, 64), 8, 16), ((48, 40), 6, 8)])
def test_poisson_disc_mask(shape, acceleration, acs):
    mask = poisson_disc_mask(shape, acceleration, acs=acs, seed=3)
    assert mask.shape == shape and mask.dtype == torch.bool
    assert abs(achieved_acceleration(mask) / acceleration - 1) <= 0.02
    ny, nx = shape
    assert mask[ny // 2 - acs // 2: ny // 2 - acs // 2 + acs, nx // 2 - acs // 2: nx // 2 - acs // 2 + acs].all()
    assert torch.equal(mask, poisson_disc_mask(shape, acceleration, acs=acs, seed=3))
    assert not torch.equal(mask, poisson_disc_mask(shape, acceleration, acs=acs, seed=4))
    # Variable density: the inner half (around the centre) is sampled more densely than the outer ring.
    y, x = torch.meshgrid(torch.arange(ny) - ny / 2, torch.arange(nx) - nx / 2, indexing="ij")
    r = torch.sqrt((y / (ny / 2)) ** 2 + (x / (nx / 2)) ** 2)
    assert mask[r < 0.5].float().mean() > 2 * mask[(r > 0.6) & (r < 1)].float().mean()
    for corner in (mask[:4, :4], mask[:4, -4:], mask[-4:, :4], mask[-4:, -4:]):
        assert not corner.any()  # corners beyond the inscribed ellipse are cropped


def test_poisson_disc_mask_is_blue_noise():
    """No two samples outside the fully sampled centre are grid neighbours at 8x."""
    mask = poisson_disc_mask((64, 64), 8, acs=8, seed=0)
    outer = mask.clone()
    outer[16:48, 16:48] = False
    neighbours = (outer[1:, :] & outer[:-1, :]).sum() + (outer[:, 1:] & outer[:, :-1]).sum()
    assert neighbours == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        uniform_1d_mask((8, 8), 0.5, 2)
    with pytest.raises(ValueError):
        uniform_1d_mask((8, 8), 2, 2, pattern="gaussian")
    with pytest.raises(ValueError):
        poisson_disc_mask((8, 8, 8), 4)
