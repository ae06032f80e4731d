"""FileOrderKSpace: the k-space operator in a file's own (permuted, flipped) axes, composed with the reorientation."""
import numpy as np
import pytest
import torch

from diffens_auto.imageio.geometry import to_canonical, to_file_order
from diffens_auto.operators import (FileOrderKSpace, KSpaceUndersampling, achieved_acceleration,
                                    canonical_to_file_order, fft_axes_to_file_order, file_to_canonical_order,
                                    kspace_fft_axes, kspace_mask, mask_to_file_order)

SHAPE = (12, 10, 7)  # canonical (X, Y, Z): even and odd sizes, so the DC reflection is exercised both ways
PERMUTED_FLIPPED = {"permutation": [2, 0, 1], "flips": [True, False, True]}
REORIENTATIONS = [{"permutation": [0, 1, 2], "flips": [False, False, False]}, PERMUTED_FLIPPED,
                  {"permutation": [1, 2, 0], "flips": [False, True, True]}]
DEGRADATIONS = [
    {"type": "kspace", "mask": "poisson", "acceleration": 3, "acs": 4, "slice_axis": 2, "mask_per_slice": False},
    {"type": "kspace", "mask": "poisson", "acceleration": 3, "acs": 4, "slice_axis": 0, "mask_per_slice": True},
    {"type": "kspace", "mask": "uniform1d", "acceleration": 3, "acs": 2, "slice_axis": 2, "mask_per_slice": False},
    {"type": "kspace", "mask": "uniform1d", "acceleration": 3, "acs": 2, "slice_axis": 1, "mask_per_slice": True},
]


def _cinner(a, b):
    return torch.sum(a.conj() * b)


def _operator(degradation, reorientation=PERMUTED_FLIPPED, seed=0):
    mask = kspace_mask(degradation, SHAPE, seed=seed)
    return FileOrderKSpace.from_canonical_mask(reorientation, mask, kspace_fft_axes(degradation))


def _random(dtype, seed, shape=(2, 1) + SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("reorientation", REORIENTATIONS)
def test_tensor_reorientation_is_imageios(reorientation):
    canonical = np.random.default_rng(0).random(SHAPE)
    file_array = to_file_order(canonical, [1, 1, 1], [0, 0, 0], np.eye(3), reorientation)[0]
    as_tensor = canonical_to_file_order(torch.from_numpy(canonical)[None, None], reorientation)
    assert np.array_equal(as_tensor[0, 0].numpy(), file_array)
    back = to_canonical(file_array, [1, 1, 1], [0, 0, 0], np.eye(3), reorientation)[0]
    assert np.array_equal(file_to_canonical_order(as_tensor, reorientation)[0, 0].numpy(), back)
    assert np.array_equal(back, canonical)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_adjoint_in_permuted_flipped_file_order(degradation):
    op = _operator(degradation)
    u, v = _random(torch.complex128, 1), _random(torch.complex128, 2)
    k = _random(torch.complex128, 3, shape=(2, 1) + tuple(op.to_file_order(u).shape[-3:]))
    left, right = _cinner(op.A(u), k), _cinner(u, op.AH(k))
    assert abs(left - right) <= 1e-10 * abs(left)
    # Real images with the real inner product: Re⟨A u, k⟩ = ⟨u, AH_real k⟩.
    real = v.real.contiguous()
    real_left, real_right = _cinner(op.A(real), k).real, torch.sum(real * op.AH_real(k))
    assert abs(real_left - real_right) <= 1e-10 * abs(real_left)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_canonical_operator_is_kspace_undersampling_of_the_file_array(degradation):
    op = _operator(degradation)
    x = _random(torch.float64, 4)
    file_array = np.stack([to_file_order(v[0].numpy(), [1, 1, 1], [0, 0, 0], np.eye(3), PERMUTED_FLIPPED)[0]
                           for v in x])[:, None]
    plain = KSpaceUndersampling(op.mask, dims=tuple(a - 3 for a in op.fft_axes))
    assert torch.equal(op.A(x), plain.A(torch.from_numpy(np.ascontiguousarray(file_array))))
    assert op.fft_axes == fft_axes_to_file_order(kspace_fft_axes(degradation), PERMUTED_FLIPPED)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
@pytest.mark.parametrize("reorientation", REORIENTATIONS)
def test_file_order_mask_poses_the_canonical_problem(degradation, reorientation):
    """The canonical mask carried to the file's axes (reflected about DC where flipped) gives the same AᴴA."""
    mask = kspace_mask(degradation, SHAPE, seed=5)
    canonical = KSpaceUndersampling(mask, dims=tuple(a - 3 for a in kspace_fft_axes(degradation)))
    op = _operator(degradation, reorientation, seed=5)
    x = _random(torch.complex128, 6)
    torch.testing.assert_close(op.AH(op.A(x)), canonical.AH(canonical.A(x)), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.pinv(op.A(x)), canonical.pinv(canonical.A(x)), rtol=0, atol=1e-12)
    assert int(op.mask.count_nonzero()) == int(mask.count_nonzero())


def test_dc_reflection_keeps_the_acs_at_the_centre():
    mask = torch.zeros(8, 7, 1, dtype=torch.bool)
    mask[4, 3, 0] = True  # DC of an (8, 7) plane: index n // 2
    flipped = mask_to_file_order(mask, {"permutation": [0, 1, 2], "flips": [True, True, False]}, (0, 1))
    assert flipped[4, 3, 0] and int(flipped.count_nonzero()) == 1


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_pinv_and_project_are_exact(degradation):
    op = _operator(degradation)
    y = op.A(_random(torch.complex128, 7))
    torch.testing.assert_close(op.A(op.pinv(y)), y, rtol=0, atol=1e-12)
    projected = op.project(_random(torch.complex128, 8), y)
    torch.testing.assert_close(op.A(projected), y, rtol=0, atol=1e-12)
    # A⁺ is the Moore-Penrose inverse: A⁺ A A⁺ = A⁺ and A⁺ y lies in the row space (projecting it changes nothing).
    zero_filled = op.pinv(y)
    torch.testing.assert_close(op.pinv(op.A(zero_filled)), zero_filled, rtol=0, atol=1e-12)
    full = FileOrderKSpace(PERMUTED_FLIPPED, torch.ones(1, 1, 1, dtype=torch.bool), (0, 1, 2))
    x = _random(torch.complex128, 9)
    torch.testing.assert_close(full.pinv(full.A(x)), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_cg_with_huge_gamma_is_hard_data_consistency(degradation):
    op = _operator(degradation)
    truth, x0_hat = _random(torch.float64, 10), _random(torch.float64, 11)
    y = op.A(truth)
    sampled = op.mask.expand(y.shape[-3:]).expand(y.shape)
    # Complex images: the minimiser tends to the hard projection as γ → ∞ (error ~ 1/γ).
    complex_x0 = x0_hat.to(torch.complex128)
    soft = op.cg_data_consistency(complex_x0, y, gamma=1e6, num_steps=20)
    hard = op.project(complex_x0, y)
    assert (soft - hard).norm() <= 1e-5 * hard.norm()
    assert (op.A(soft) - y)[sampled].norm() <= 1e-5 * y[sampled].norm()
    # Real images (the priors'): y of a real object is reached on the sampled points as well.
    real = op.cg_data_consistency(x0_hat, y, gamma=1e6, num_steps=20)
    assert real.dtype == torch.float64
    assert (op.A(real) - y)[sampled].norm() <= 1e-5 * y[sampled].norm()


def test_gamma_means_the_same_for_every_mask():
    """Unit normalisation: per sampled frequency the DDS solution is (γ y + k̂0)/(γ + 1), whatever the mask."""
    gamma = 5.0
    for acceleration, weight in ((2, 1.0), (6, 1.0), (3, 7.5)):
        degradation = {"type": "kspace", "mask": "uniform1d", "acceleration": acceleration, "acs": 2}
        mask = kspace_mask(degradation, SHAPE, seed=1) * weight
        op = FileOrderKSpace.from_canonical_mask(PERMUTED_FLIPPED, mask, kspace_fft_axes(degradation))
        assert float(op.mask.max()) == 1.0
        y, x0_hat = op.A(_random(torch.complex128, 12)), _random(torch.complex128, 13)
        refined = op.cg_data_consistency(x0_hat, y, gamma=gamma, num_steps=5)
        k_refined, k_prior = op.kspace.fft(op.to_file_order(refined)), op.kspace.fft(op.to_file_order(x0_hat))
        sampled = (op.mask != 0).expand(y.shape[-3:]).expand(y.shape)
        torch.testing.assert_close(k_refined[sampled], ((gamma * y + k_prior) / (gamma + 1))[sampled])
        torch.testing.assert_close(k_refined[~sampled], k_prior[~sampled])
    raw = FileOrderKSpace(PERMUTED_FLIPPED, torch.full((1, 1, 1), 2.0), (0, 1), normalisation="none")
    assert float(raw.mask.max()) == 2.0


def test_cg_data_consistency_is_differentiable():
    op = _operator(DEGRADATIONS[1])
    y = op.A(_random(torch.float64, 14))
    x0_hat = _random(torch.float64, 15).requires_grad_(True)
    (op.A(op.cg_data_consistency(x0_hat, y)) - y).abs().pow(2).sum().backward()
    assert torch.isfinite(x0_hat.grad).all() and x0_hat.grad.abs().sum() > 0


@pytest.mark.parametrize("kind, acceleration, acs", [("poisson", 4, 8), ("poisson", 6, 8), ("uniform1d", 4, 8),
                                                    ("uniform1d", 8, 4)])
@pytest.mark.parametrize("per_slice", [False, True])
def test_mask_acceleration_and_seeds(kind, acceleration, acs, per_slice):
    degradation = {"type": "kspace", "mask": kind, "acceleration": acceleration, "acs": acs, "slice_axis": 1,
                   "mask_per_slice": per_slice}
    shape = (48, 3, 40)
    mask = kspace_mask(degradation, shape, seed=3)
    assert mask.dtype == torch.bool and mask.shape == ((48, 3, 40) if per_slice else (48, 1, 40))
    assert abs(achieved_acceleration(mask) / acceleration - 1) <= 0.03
    half = acs // 2
    assert mask[24 - half: 24 + half, :, 20 - half: 20 + half].all()  # the ACS region around DC (index n // 2)
    assert torch.equal(mask, kspace_mask(degradation, shape, seed=3))
    assert not torch.equal(mask, kspace_mask(degradation, shape, seed=4))
    if per_slice:
        assert not torch.equal(mask[:, 0], mask[:, 1])
        single = kspace_mask({**degradation, "mask_per_slice": False}, shape, seed=3)
        assert single.shape == (48, 1, 40)
    if kind == "uniform1d":
        # whole lines along the later in-plane axis (Z here): the other in-plane axis is read out fully
        assert torch.equal(mask.all(dim=0), mask.any(dim=0))


def test_mask_defaults_and_fft_axes():
    degradation = {"type": "kspace", "mask": "uniform1d", "acceleration": 4}
    assert kspace_fft_axes(degradation) == (0, 1)  # slice_axis defaults to 2 (axial)
    mask = kspace_mask(degradation, (32, 30, 5))
    assert mask.shape == (32, 30, 1) and mask[:, 15 - 6: 15 + 6].all()  # acs defaults to 12 lines
    assert kspace_fft_axes({**degradation, "slice_axis": 0}) == (1, 2)


@pytest.mark.parametrize("degradation, words", [
    ({"type": "avgpool", "factor": [2, 2, 2]}, "type"),
    ({"type": "kspace", "mask": "radial", "acceleration": 4}, "mask"),
    ({"type": "kspace", "mask": "poisson", "acceleration": 0.5}, "acceleration"),
    ({"type": "kspace", "mask": "poisson"}, "acceleration"),
    ({"type": "kspace", "mask": "poisson", "acceleration": 4, "slice_axis": 3}, "slice_axis"),
])
def test_bad_degradations_are_refused(degradation, words):
    with pytest.raises(ValueError, match=words):
        kspace_mask(degradation, SHAPE)


@pytest.mark.parametrize("arguments, words", [
    (({"permutation": [0, 0, 1], "flips": [False] * 3}, torch.ones(1, 1, 1), (0, 1)), "permutation"),
    ((PERMUTED_FLIPPED, torch.ones(1, 1, 1), (0, 0)), "fft_axes"),
    ((PERMUTED_FLIPPED, torch.ones(1, 1, 1), (0, 3)), "fft_axes"),
    ((PERMUTED_FLIPPED, torch.zeros(2, 2, 1, dtype=torch.bool), (0, 1)), "samples no point"),
    ((PERMUTED_FLIPPED, -torch.ones(1, 1, 1), (0, 1)), "non-negative"),
    ((PERMUTED_FLIPPED, torch.ones(4, 4), (0, 1)), "3 axes"),
])
def test_bad_operators_are_refused(arguments, words):
    with pytest.raises(ValueError, match=words):
        FileOrderKSpace(*arguments)
