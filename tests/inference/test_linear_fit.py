"""The MT / both floor: a least-squares linear map of the inputs, recovered exactly when the truth is linear."""
import numpy as np
import pytest
from synthetic_images import blob

from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference.linear_fit import apply_linear_map, fit_linear_map, linear_map_folder
from diffens_auto.operators import avgpool_downsample, degrade_image

SHAPE = (12, 12, 8)
PROPS = {"shape": list(SHAPE), "spacing": [1.0, 1.0, 2.0], "origin": [3.0, -2.0, 1.0],
         "direction": [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]}
SR = {"type": "avgpool", "factor": [2, 2, 2]}


def _case(folder, index, target_of):
    """Channel 1 a blob phantom (0 outside), channel 3 = target_of(channel 1) inside, 0 outside."""
    t1ce = (blob(SHAPE, index) * 100).astype(np.float32)
    flair = np.where(t1ce != 0, target_of(t1ce, index), 0).astype(np.float32)
    files = {}
    for channel, array in ((1, t1ce), (3, flair)):
        files[channel] = folder / f"case{index}_{channel:04d}.nii.gz"
        write_image(array, PROPS, files[channel])
    return files


def test_an_exactly_linear_translation_is_recovered(tmp_path):
    cases = [_case(tmp_path, i, lambda x, i: 2.5 * x - 7.0) for i in range(3)]
    fit = fit_linear_map(cases, target=3, inputs=[1])
    assert fit["weights"] == pytest.approx({"channel 1": 2.5, "offset": -7.0}, rel=1e-4)   # float32 files
    arrays, props = {}, {}
    for channel in (1, 3):
        arrays[channel], props[channel] = read_image(cases[0][channel])
    output, grid = apply_linear_map(fit, {1: arrays[1]}, {1: props[1]})
    np.testing.assert_allclose(output, arrays[3], atol=1e-3)
    assert np.all(output[arrays[1] == 0] == 0) and grid["shape"] == list(SHAPE)


def test_the_both_floor_uses_the_measurement_and_projects_onto_it(tmp_path):
    # a FLAIR that is not a function of T1ce alone: the fit needs the interpolated measurement too
    cases = [_case(tmp_path, i, lambda x, i: 0.5 * x + 30.0 * np.sin(np.arange(x.size).reshape(x.shape) / 7.0 + i))
             for i in range(3)]
    fit = fit_linear_map(cases, target=3, inputs=[1], degradation=SR)
    assert set(fit["weights"]) == {"channel 1", "up(A target)", "offset"}
    t1ce, t1ce_props = read_image(cases[0][1])
    flair, flair_props = read_image(cases[0][3])
    lowres, lowres_props = degrade_image(flair, flair_props, SR)
    arrays, props = {1: t1ce, 3: lowres}, {1: t1ce_props, 3: lowres_props}
    plain, _ = apply_linear_map(fit, arrays, props)
    projected, grid = apply_linear_map(fit, arrays, props, project=True)
    assert grid["shape"] == list(SHAPE)
    # the projection makes the output's blocks average to the measurement, and brings it closer to the truth
    np.testing.assert_allclose(avgpool_downsample(projected.astype(np.float64), SR["factor"]), lowres, atol=1e-3)
    assert np.abs(projected - flair).mean() < np.abs(plain - flair).mean()
    write_image(lowres, lowres_props, tmp_path / "lr.nii.gz")
    written = linear_map_folder({"case0": {1: cases[0][1], 3: tmp_path / "lr.nii.gz"}}, tmp_path / "out", fit,
                                project=True)
    assert written == [tmp_path / "out" / "case0.nii.gz"]
    np.testing.assert_allclose(read_image(written[0])[0], projected, atol=1e-4)
