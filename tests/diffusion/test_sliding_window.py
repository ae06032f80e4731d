"""The Gaussian sliding window reproduces a full-volume pass of a shift-equivariant model.

Why the comparisons are exact: a pointwise model gives every window the same value at a voxel, so any
positive blend of them is that value (up to rounding) on every voxel. A model whose receptive field reaches
r voxels (one zero-padded 3x3x3 conv, then pointwise layers) agrees with the full pass at a voxel of a
window unless the voxel lies within r of a window face that is inside the volume (there the window's zero
padding replaces real neighbours; at a face on the volume border both passes see the same zeros). The test
marks every voxel that some window sees that close to an inner face and compares all the others; the
Gaussian weights are positive, so a voxel that every covering window gets right is right after blending.
"""
import pytest
import torch
from torch import nn

from diffens_auto.diffusion.sliding_window import gaussian_importance, sliding_window, window_starts


class Pointwise(nn.Module):
    """1x1x1 convs and tanh on two inputs: receptive field 0."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b = nn.Conv3d(3, 6, 1), nn.Conv3d(6, 2, 1)

    def forward(self, x, c):
        return self.b(torch.tanh(self.a(torch.cat([x, c], dim=1))))


class SmallReceptiveField(nn.Module):
    """A zero-padded 3x3x3 conv, then pointwise layers: receptive field r = 1."""

    radius = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.head = nn.Conv3d(3, 6, 3, padding=1), nn.Conv3d(6, 1, 1)

    def forward(self, x, c):
        return self.head(torch.tanh(self.conv(torch.cat([x, c], dim=1))))


def exact_voxels(shape, window, overlap, radius):
    """Voxels that no window sees within `radius` of one of its faces inside the (padded) volume."""
    pads = [max(w - s, 0) for s, w in zip(shape, window)]
    padded = [s + p for s, p in zip(shape, pads)]
    ok = torch.ones(padded, dtype=torch.bool)
    starts = [window_starts(s, w, overlap) for s, w in zip(padded, window)]
    for axis in range(3):
        for start in starts[axis]:
            stop = start + window[axis]
            near = torch.zeros(padded[axis], dtype=torch.bool)
            if start > 0:
                near[start:start + radius] = True
            if stop < padded[axis]:
                near[stop - radius:stop] = True
            view = [1, 1, 1]
            view[axis] = -1
            ok &= ~near.view(view)
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, shape))
    return ok[crop]


def test_window_starts_cover_and_end_flush():
    for size, window, overlap in [(20, 8, 0.5), (17, 8, 0.5), (8, 8, 0.5), (33, 8, 0.25), (9, 8, 0.0), (5, 8, 0.5)]:
        starts = window_starts(size, window, overlap)
        assert starts[0] == 0
        assert starts[-1] == max(size - window, 0)
        steps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(0 < step <= window * (1 - overlap) + 0.5 for step in steps)
    assert window_starts(16, 8, 0.5) == [0, 4, 8]


def test_gaussian_importance_shape_peak_floor():
    g = gaussian_importance((8, 6, 5), 0.125)
    assert g.shape == (8, 6, 5)
    assert g.max() == 1.0 and g.min() >= 1e-6
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(2))
    assert g[4, 3, 2] > g[0, 3, 2]
    tiny_sigma = gaussian_importance((16, 16, 16), 0.01)
    assert tiny_sigma.min() == pytest.approx(1e-6)


@pytest.mark.parametrize("shape", [(16, 16, 16), (19, 17, 13), (21, 9, 8)])
def test_pointwise_model_exact_everywhere(shape):
    model = Pointwise()
    x, c = torch.randn(2, 1, *shape), torch.randn(1, 2, *shape).expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        full = model(x, c)
        windowed = sliding_window(model, [x, c], (8, 8, 8), overlap=0.5, sigma_scale=0.125, out_channels=2)
    assert windowed.shape == full.shape
    assert (windowed - full).abs().max() <= 1e-5


@pytest.mark.parametrize("shape, window, overlap", [
    ((24, 20, 16), (12, 12, 12), 0.5),     # divisible on X only, stride 6
    ((23, 17, 13), (10, 8, 12), 0.5),      # nothing divisible by the stride
    ((30, 14, 12), (12, 12, 12), 0.25),
])
def test_receptive_field_model_exact_away_from_inner_window_faces(shape, window, overlap):
    model = SmallReceptiveField()
    x, c = torch.randn(1, 1, *shape), torch.randn(1, 2, *shape)
    with torch.no_grad():
        full = model(x, c)
        windowed = sliding_window(model, [x, c], window, overlap=overlap, sigma_scale=0.125)
    ok = exact_voxels(shape, window, overlap, model.radius)
    assert ok.float().mean() > 0.3                       # the comparison covers much of the volume
    assert ok[0, 0, 0] and ok[-1, -1, -1] and ok[0].any()   # volume borders included: flush windows see the same zeros
    assert (windowed - full)[0, 0][ok].abs().max() <= 1e-5
    assert (windowed - full)[0, 0][~ok].abs().max() > 1e-4   # the test would notice wrong blending


@pytest.mark.parametrize("shape", [(5, 6, 7), (6, 20, 5), (8, 8, 3)])
def test_volume_smaller_than_window_is_padded_and_cropped_back(shape):
    model = SmallReceptiveField()
    x, c = torch.randn(1, 1, *shape), torch.randn(1, 2, *shape)
    window = (8, 8, 8)
    with torch.no_grad():
        full = model(x, c)
        windowed = sliding_window(model, [x, c], window, overlap=0.5)
    assert windowed.shape == full.shape
    # zero padding of the input is exactly the conv's own zero padding, so padded axes are exact throughout
    ok = exact_voxels(shape, window, 0.5, model.radius)
    assert (windowed - full)[0, 0][ok].abs().max() <= 1e-5
    if all(s <= w for s, w in zip(shape, window)):
        assert ok.all()


def window_index_fn(shape):
    """fn for sliding_window: a constant per window, that window's number in (sx, sy, sz) order of its start.

    The window's start is read from a coordinate input (voxel index per axis), so the value does not depend on
    the order in which sliding_window visits the windows.
    """
    def fn(coordinates):
        start = [int(coordinates[0, axis, 0, 0, 0]) for axis in range(3)]
        value = start[0] * shape[1] * shape[2] + start[1] * shape[2] + start[2]
        return torch.full((1, 1, *coordinates.shape[2:]), float(value), dtype=torch.float64)
    return fn


def expected_blend(shape, window, starts, sigma_scale, gaussian=True):
    """sum_w g_w(v) c_w / sum_w g_w(v) over the windows w covering voxel v, computed voxel by voxel."""
    total, weight = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    for sx in starts[0]:
        for sy in starts[1]:
            for sz in starts[2]:
                value = sx * shape[1] * shape[2] + sy * shape[2] + sz
                g = torch.ones(window, dtype=torch.float64)
                if gaussian:   # sigma = sigma_scale * window, centred on the window's centre (w - 1) / 2
                    for axis, w in enumerate(window):
                        u = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
                        view = [1, 1, 1]
                        view[axis] = -1
                        g = g * torch.exp(-u ** 2 / (2 * (sigma_scale * w) ** 2)).view(view)
                region = (slice(sx, sx + window[0]), slice(sy, sy + window[1]), slice(sz, sz + window[2]))
                total[region] += g * value
                weight[region] += g
    return total / weight


def test_overlapping_windows_blend_with_the_gaussian_weights():
    """A constant per window: a voxel that several windows cover gets their Gaussian-weighted mean."""
    shape, window, sigma_scale = (16, 12, 10), (8, 6, 10), 0.25
    starts = [[0, 4, 8], [0, 3, 6], [0]]            # fewest starts with step <= window / 2, last one flush
    assert [window_starts(n, w, 0.5) for n, w in zip(shape, window)] == starts
    coordinates = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                             indexing="ij"))[None]
    blended = sliding_window(window_index_fn(shape), [coordinates], window, overlap=0.5, sigma_scale=sigma_scale)
    expected = expected_blend(shape, window, starts, sigma_scale)
    assert (blended[0, 0] - expected).abs().max() <= 1e-9
    uniform = expected_blend(shape, window, starts, sigma_scale, gaussian=False)
    assert (blended[0, 0] - uniform).abs().max() > 1.0   # uniform weights would fail this test


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_blend_is_returned_in_the_predictions_dtype(dtype):
    model = Pointwise().to(dtype)
    x, c = torch.randn(1, 1, 12, 12, 12, dtype=dtype), torch.randn(1, 2, 12, 12, 12, dtype=dtype)
    with torch.no_grad():
        windowed = sliding_window(model, [x, c], (8, 8, 8), overlap=0.5, out_channels=2)
        full = model(x, c)
    assert windowed.dtype == dtype
    tolerance = {torch.bfloat16: 3e-2, torch.float16: 3e-3}.get(dtype, 1e-5)
    assert (windowed.double() - full.double()).abs().max() <= tolerance


def test_one_window_covering_the_volume_is_a_plain_call():
    model = SmallReceptiveField()
    x, c = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(sliding_window(model, [x, c], (8, 8, 8)), model(x, c))


def test_argument_errors():
    model = Pointwise()
    x, c = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(model, [x, c], (4, 4, 4), overlap=1.0)
    with pytest.raises(ValueError, match="channels"):
        sliding_window(model, [x, c], (4, 4, 4), out_channels=1)
    with pytest.raises(ValueError, match="spatial shape"):
        sliding_window(model, [x, c[..., :7]], (4, 4, 4))
    with pytest.raises(ValueError, match="window"):
        sliding_window(model, [x, c], (4, 4))
