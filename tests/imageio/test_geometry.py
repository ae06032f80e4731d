"""Pure-numpy geometry helpers on props dicts."""
import json

import numpy as np

from diffens_auto.imageio import check_same_geometry, crop_geometry, index_to_world, with_spacing
from diffens_auto.imageio.geometry import canonical_reorientation, to_canonical, to_file_order

PROPS = {"spacing": [0.5, 2.0, 3.0], "origin": [10.0, -5.0, 2.0],
         "direction": [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], "shape": [4, 6, 8],
         "reorientation": {"permutation": [0, 1, 2], "flips": [False, False, False]}, "io": {"backend": "simpleitk"}}


def test_index_to_world_single_and_many():
    expected = np.array([10.0 - 2.0 * 2, -5.0 - 0.5 * 1, 2.0 + 3.0 * 3])
    np.testing.assert_allclose(index_to_world(PROPS, [1, 2, 3]), expected)
    np.testing.assert_allclose(index_to_world(PROPS, [[0, 0, 0], [1, 2, 3]]), [PROPS["origin"], expected])


def test_crop_geometry_moves_origin_to_the_crop_corner():
    cropped = crop_geometry(PROPS, [1, 2, 3], shape=[2, 2, 2])
    np.testing.assert_allclose(index_to_world(cropped, [1, 1, 1]), index_to_world(PROPS, [2, 3, 4]))
    assert cropped["shape"] == [2, 2, 2] and PROPS["origin"] == [10.0, -5.0, 2.0]
    assert crop_geometry(PROPS, [1, 2, 3])["shape"] == [3, 4, 5]


def test_with_spacing_keeps_the_field_of_view():
    coarse = with_spacing(PROPS, [1.0, 4.0, 6.0], [2, 3, 4])
    # Outer edge of the first voxel: centre minus half a voxel along each axis.
    edge = lambda p: index_to_world(p, [-0.5, -0.5, -0.5])  # noqa: E731
    np.testing.assert_allclose(edge(coarse), edge(PROPS))
    np.testing.assert_allclose(index_to_world(coarse, [1.5, 2.5, 3.5]), index_to_world(PROPS, [3.5, 5.5, 7.5]))
    assert coarse["shape"] == [2, 3, 4] and coarse["direction"] == PROPS["direction"]


def test_check_same_geometry_lists_each_problem():
    assert check_same_geometry(PROPS, json.loads(json.dumps(PROPS))) == []
    within = dict(PROPS, origin=[10.0 + 5e-5, -5.0, 2.0])
    assert check_same_geometry(PROPS, within) == []
    other = dict(PROPS, shape=[4, 6, 9], spacing=[0.5, 2.0, 3.1],
                 direction=[[0.0, -1.0, 0.0], [-1.0, 0.0, 1e-5], [0.0, 0.0, 1.0]])
    problems = check_same_geometry(PROPS, other)
    assert len(problems) == 3
    assert [p.split()[0] for p in problems] == ["shape", "spacing", "direction"]


def test_reorientation_round_trip_with_a_different_shape():
    # LPS columns: the file axes point to P, I and R.
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    reorientation = canonical_reorientation([1.0, 2.0, 3.0], direction)
    file_array = np.arange(24).reshape(2, 3, 4)
    array, spacing, origin, canonical_direction = to_canonical(file_array, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0],
                                                               direction, reorientation)
    assert array.shape == (4, 2, 3)
    np.testing.assert_array_equal(array, np.flip(np.transpose(file_array, (2, 0, 1)), axis=(1, 2)))
    np.testing.assert_allclose(canonical_direction, np.diag([-1.0, -1.0, 1.0]))
    back, back_spacing, back_origin, back_direction = to_file_order(array, spacing, origin, canonical_direction,
                                                                    reorientation)
    np.testing.assert_array_equal(back, file_array)
    np.testing.assert_allclose(back_origin, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(back_direction, direction)
    np.testing.assert_allclose(back_spacing, [1.0, 2.0, 3.0])
