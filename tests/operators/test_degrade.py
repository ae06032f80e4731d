"""degrade_image: values = A(array), low-resolution voxel centres = high-resolution block centres; highres_grid."""
import numpy as np
import pytest
import torch

from diffens_auto.operators import AvgPoolSR, degrade_image, highres_grid, lowres_grid, operator_for


def _world(props, index):
    """origin + direction @ (spacing * i) for indices of shape (N, 3)."""
    index = np.asarray(index, float)
    return np.asarray(props["origin"]) + (index * np.asarray(props["spacing"])) @ np.asarray(props["direction"]).T


def _oblique_props(shape):
    angle_a, angle_b = 0.3, -0.5
    rz = np.array([[np.cos(angle_a), -np.sin(angle_a), 0], [np.sin(angle_a), np.cos(angle_a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(angle_b), -np.sin(angle_b)], [0, np.sin(angle_b), np.cos(angle_b)]])
    return {"spacing": [0.7, 1.1, 2.3], "origin": [12.0, -40.5, 7.25], "direction": (rz @ rx).tolist(),
            "shape": list(shape), "reorientation": {"permutation": [1, 0, 2], "flips": [True, False, False]},
            "io": {"backend": "nibabel", "qform_code": 1, "sform_code": 1}}


@pytest.mark.parametrize("factor", [[4, 4, 4], [2, 3, 1], [1, 1, 4]])
def test_lowres_voxel_centres_are_block_centres(factor):
    shape = (12, 12, 8)
    props = _oblique_props(shape)
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    lowres, lr_props = degrade_image(array, props, {"type": "avgpool", "factor": factor})
    assert lowres.dtype == np.float32 and list(lowres.shape) == lr_props["shape"]
    assert lr_props["direction"] == props["direction"]
    assert lr_props["reorientation"] == props["reorientation"] and lr_props["io"] == props["io"]
    expected = AvgPoolSR(factor).A(torch.from_numpy(array.astype(np.float64))[None, None])[0, 0].numpy()
    np.testing.assert_allclose(lowres, expected, rtol=1e-6, atol=1e-6)
    for block in [(0, 0, 0), (1, 2, 1), tuple(n - 1 for n in lr_props["shape"])]:
        hr_indices = np.stack(np.meshgrid(*[np.arange(b * f, b * f + f) for b, f in zip(block, factor)],
                                          indexing="ij"), -1).reshape(-1, 3)
        np.testing.assert_allclose(_world(lr_props, [block])[0], _world(props, hr_indices).mean(0), atol=1e-9)


def test_highres_grid_inverts_lowres_grid():
    props = _oblique_props((16, 12, 8))
    for factor in ([4, 4, 4], [2, 3, 1], 2):
        lr_props = lowres_grid(props, factor)
        back = highres_grid(lr_props, factor)
        assert back["shape"] == props["shape"] and back["reorientation"] == props["reorientation"]
        np.testing.assert_allclose(back["spacing"], props["spacing"], atol=1e-12)
        np.testing.assert_allclose(back["origin"], props["origin"], atol=1e-9)
        np.testing.assert_allclose(back["direction"], props["direction"], atol=0)


def test_prediction_grid_round_trip():
    """A(output) on highres_grid(input) equals the input on the input's own grid."""
    lr_props = _oblique_props((3, 4, 2))
    lowres = np.random.default_rng(1).normal(size=(3, 4, 2)).astype(np.float32)
    factor = [4, 2, 4]
    hr_props = highres_grid(lr_props, factor)
    op = operator_for({"type": "avgpool", "factor": factor})
    output = op.project(torch.randn(1, 1, *hr_props["shape"], dtype=torch.float64),
                        torch.from_numpy(lowres.astype(np.float64))[None, None])[0, 0].numpy()
    again, again_props = degrade_image(output, hr_props, {"type": "avgpool", "factor": factor})
    np.testing.assert_allclose(again, lowres, atol=1e-6)
    assert again_props["shape"] == lr_props["shape"]
    np.testing.assert_allclose(again_props["origin"], lr_props["origin"], atol=1e-9)
    np.testing.assert_allclose(again_props["spacing"], lr_props["spacing"], atol=1e-12)


def test_partial_blocks_shape_and_original_hr_shape():
    props = _oblique_props((17, 18, 13))
    lowres, lr_props = degrade_image(np.ones((17, 18, 13), np.float32), props, {"type": "avgpool", "factor": 4})
    assert lowres.shape == (5, 5, 4) and np.allclose(lowres, 1)
    # The last voxel sits at the FULL block's centre (a regular grid), past its real voxels' centroid.
    np.testing.assert_allclose(_world(lr_props, [(4, 4, 3)])[0],
                               _world(props, [(16 + 1.5, 16 + 1.5, 12 + 1.5)])[0], atol=1e-9)
    back = highres_grid(lr_props, 4, hr_shape=(17, 18, 13))
    assert back["shape"] == [17, 18, 13]
    np.testing.assert_allclose(back["origin"], props["origin"], atol=1e-9)
    with pytest.raises(ValueError, match="does not pool"):
        highres_grid(lr_props, 4, hr_shape=(12, 18, 13))


def test_unknown_degradation_and_wrong_shape_are_refused():
    props = _oblique_props((4, 4, 4))
    with pytest.raises(ValueError, match="supported types"):
        degrade_image(np.zeros((4, 4, 4)), props, {"type": "blur", "factor": [2, 2, 2]})
    with pytest.raises(ValueError, match="does not match"):
        degrade_image(np.zeros((4, 4, 5)), props, {"type": "avgpool", "factor": [2, 2, 2]})


def test_a_kspace_degradation_is_refused_with_the_operator_to_build_instead():
    kspace = {"type": "kspace", "mask": "poisson", "acceleration": 8.0, "acs": 12, "slice_axis": 2}
    props = {"shape": [8, 8, 8], "spacing": [1.0] * 3, "origin": [0.0] * 3, "direction": np.eye(3).tolist()}
    for build in (lambda: operator_for(kspace), lambda: degrade_image(np.ones((8, 8, 8)), props, kspace)):
        with pytest.raises(ValueError, match="undersamples k-space: operator_for and degrade_image build only average "
                                             "pooling. Fix: .*kspace_mask.*FileOrderKSpace.from_canonical_mask"):
            build()
