"""Measurement bundles CASE.npz: round trips, geometry as read_image's for the same affine, every malformed kind."""
import pickle

import nibabel as nib
import numpy as np
import pytest

from diffens_auto.errors import DiffensError
from diffens_auto.imageio import (ImageReadError, KSpaceBundle, MeasurementBundleError, bundle_geometry,
                                  check_same_geometry, read_image, read_kspace_bundle, write_image, write_kspace_bundle)
from diffens_auto.imageio.geometry import to_canonical

FILE_SHAPE = (7, 9, 5)


def _rotation(angle_deg: float, axis: int) -> np.ndarray:
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(kind: str) -> np.ndarray:
    """RAS+ affines whose file axes are permuted and flipped against RAS: plain, oblique (20/25 deg) or sheared."""
    linear = np.array([[0.0, 0.0, -2.9], [0.7, 0.0, 0.0], [0.0, 1.3, 0.0]])  # file axes ~ (A, S, L)
    if kind == "oblique":
        linear = _rotation(20, 0) @ _rotation(25, 1) @ linear
    elif kind == "sheared":
        linear = linear + np.array([[0.0, 0.3, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, [10.0, -5.5, 3.25]
    return affine


def _arrays(affine_kind: str = "oblique") -> dict:
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal(FILE_SHAPE) + 1j * rng.standard_normal(FILE_SHAPE)).astype(np.complex64)
    mask = rng.random((7, 9, 1)) < 0.4
    mask[3, 4, 0] = True
    return {"kspace": kspace * mask, "mask": mask, "affine": _affine(affine_kind), "fft_axes": np.array([0, 1]),
            "noise_std": np.float64(0.05)}


def _bundle(affine_kind: str = "oblique") -> KSpaceBundle:
    arrays = _arrays(affine_kind)
    return KSpaceBundle(kspace=arrays["kspace"], mask=arrays["mask"], affine=arrays["affine"], fft_axes=(0, 1),
                        noise_std=0.05)


@pytest.mark.parametrize("affine_kind", ["plain", "oblique", "sheared"])
def test_round_trip(tmp_path, affine_kind):
    path = tmp_path / "case_001.npz"
    bundle = _bundle(affine_kind)
    write_kspace_bundle(bundle, path)
    read = read_kspace_bundle(path)
    assert read.kspace.dtype == np.complex64 and np.array_equal(read.kspace, bundle.kspace)
    assert read.mask.dtype == bool and np.array_equal(read.mask, bundle.mask)
    assert np.array_equal(read.affine, bundle.affine)
    assert read.fft_axes == (0, 1) and read.noise_std == 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_001.npz"]  # atomic: no temporary file left


@pytest.mark.parametrize("affine_kind", ["plain", "oblique", "sheared"])
def test_geometry_is_read_images_for_a_nifti_with_the_same_affine(tmp_path, affine_kind):
    affine = _affine(affine_kind)
    nib.save(nib.Nifti1Image(np.zeros(FILE_SHAPE, np.float32), affine), str(tmp_path / "scan.nii.gz"))
    _, expected = read_image(tmp_path / "scan.nii.gz")
    props = bundle_geometry(affine, FILE_SHAPE)
    assert check_same_geometry(expected, props) == []
    assert props["reorientation"] == expected["reorientation"] and props["io"] == expected["io"]
    assert props["reorientation"] == {"permutation": [2, 0, 1], "flips": [True, False, False]}
    assert props == _bundle(affine_kind).props


@pytest.mark.parametrize("affine_kind", ["plain", "oblique", "sheared"])
def test_an_image_written_on_the_props_lands_on_the_affine_grid(tmp_path, affine_kind):
    bundle = _bundle(affine_kind)
    props = bundle.props
    file_magnitude = np.random.default_rng(1).random(FILE_SHAPE).astype(np.float32)
    canonical = to_canonical(file_magnitude, [1, 1, 1], [0, 0, 0], np.eye(3), props["reorientation"])[0]
    assert list(canonical.shape) == props["shape"]
    write_image(canonical, props, tmp_path / "case_001.nii.gz")
    written = nib.load(str(tmp_path / "case_001.nii.gz"))
    np.testing.assert_allclose(written.affine, bundle.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(written.dataobj), file_magnitude)


def test_complex128_is_written_as_complex64(tmp_path):
    bundle = _bundle()
    wide = KSpaceBundle(kspace=bundle.kspace.astype(np.complex128), mask=bundle.mask, affine=bundle.affine,
                        fft_axes=[1, 0], noise_std=0)
    write_kspace_bundle(wide, tmp_path / "wide.npz")
    read = read_kspace_bundle(tmp_path / "wide.npz")
    assert read.kspace.dtype == np.complex64 and read.fft_axes == (0, 1) and read.noise_std == 0.0


def _write_raw(tmp_path, **changes) -> object:
    arrays = {**_arrays(), **changes}
    path = tmp_path / "case_007.npz"
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def _refused(path, *words) -> str:
    with pytest.raises(MeasurementBundleError) as caught:
        read_kspace_bundle(path)
    message = str(caught.value)
    assert str(path) in message and "Fix:" in message, message
    for word in words:
        assert word in message, message
    return message


MALFORMED = [
    ({"kspace": None}, ["key 'kspace'", "missing"]),
    ({"mask": None, "affine": None}, ["keys 'mask, affine'", "missing"]),
    ({"sensitivities": np.ones((2, 7, 9, 5))}, ["key 'sensitivities'", "single-coil"]),
    ({"kspace": np.ones(FILE_SHAPE, np.float32)}, ["key 'kspace'", "float32, not complex"]),
    ({"kspace": np.ones((2,) + FILE_SHAPE, np.complex64)}, ["key 'kspace'", "multi-coil"]),
    ({"kspace": np.full(FILE_SHAPE, np.nan, np.complex64)}, ["key 'kspace'", "NaN"]),
    ({"mask": np.ones((7, 9, 1), np.uint8)}, ["key 'mask'", "uint8, not bool"]),
    ({"mask": np.ones((7, 8, 1), bool)}, ["key 'mask'", "does not broadcast"]),
    ({"mask": np.ones((7, 9), bool)}, ["key 'mask'", "3 axes"]),
    ({"mask": np.zeros((7, 9, 1), bool)}, ["key 'mask'", "no point"]),
    ({"affine": np.eye(3)}, ["key 'affine'", "not a real 4x4"]),
    ({"affine": np.diag([1.0, 0.0, 1.0, 1.0])}, ["key 'affine'", "singular"]),
    ({"affine": np.diag([1.0, np.inf, 1.0, 1.0])}, ["key 'affine'", "finite"]),
    ({"affine": np.ones((4, 4))}, ["key 'affine'", "last row"]),
    ({"fft_axes": np.array([0, 3])}, ["key 'fft_axes'", "among 0, 1, 2"]),
    ({"fft_axes": np.array([1, 1])}, ["key 'fft_axes'", "distinct"]),
    ({"fft_axes": np.array([0.0, 1.0])}, ["key 'fft_axes'", "float64"]),
    ({"noise_std": np.float64(-0.1)}, ["key 'noise_std'", ">= 0"]),
    ({"noise_std": np.float64(np.nan)}, ["key 'noise_std'", "nan"]),
    ({"noise_std": np.array([0.1, 0.2])}, ["key 'noise_std'", "scalar"]),
]


@pytest.mark.parametrize("changes, words", MALFORMED, ids=[" ".join(w) for _, w in MALFORMED])
def test_malformed_bundles_are_refused(tmp_path, changes, words):
    _refused(_write_raw(tmp_path, **changes), *words)


def test_pickled_object_arrays_are_refused_without_unpickling(tmp_path):
    path = _write_raw(tmp_path, fft_axes=np.array([[0, 1], None], dtype=object))
    _refused(path, "key 'fft_axes'", "unpickling")
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"kspace": 1}))
    _refused(pickled, "the file", "not a readable NumPy .npz archive")


@pytest.mark.parametrize("content, words", [(b"not a zip archive", "not a readable"), (None, "single .npy")])
def test_files_that_are_not_npz_archives(tmp_path, content, words):
    path = tmp_path / "case.npz"
    if content is None:
        with open(path, "wb") as stream:
            np.save(stream, np.zeros(3))
    else:
        path.write_bytes(content)
    _refused(path, "the file", words)


def test_missing_file_and_error_types(tmp_path):
    message = _refused(tmp_path / "absent.npz", "does not exist")
    assert message.startswith("Cannot read measurement bundle")
    assert issubclass(MeasurementBundleError, ImageReadError)
    assert issubclass(MeasurementBundleError, DiffensError) and issubclass(MeasurementBundleError, ValueError)


def test_writing_a_malformed_bundle_is_refused_and_writes_nothing(tmp_path):
    bundle = _bundle()
    bad = KSpaceBundle(kspace=bundle.kspace, mask=bundle.mask.astype(np.uint8), affine=bundle.affine,
                       fft_axes=(0, 1), noise_std=0.0)
    with pytest.raises(MeasurementBundleError, match="Cannot write measurement bundle .*key 'mask'.*Fix:"):
        write_kspace_bundle(bad, tmp_path / "bad.npz")
    assert list(tmp_path.iterdir()) == []
