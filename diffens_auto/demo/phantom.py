"""A synthetic multi-contrast brain defined in continuous world coordinates (LPS, mm), rendered on any voxel grid.

The phantom is a function of physical position only, so a case can be sampled on grids of any orientation,
origin and spacing and the geometry stays exact: voxel i of a grid lies at origin + direction @ (spacing * i),
the convention SimpleITK uses.

Tissue model (in the head's normalised frame q = (p + u(p) - centre) / semi_axes, |q| = 1 is the head surface):
CSF fills the head; grey matter starts inside a pial surface at |q| ~ 0.92 with CSF-filled sulci; white matter
lies inside a folded surface at |q| ~ 0.74; a midline fissure and two lateral ventricles hold CSF; a tumour has
a necrotic core, an enhancing rim and oedema that spreads into white (and less into grey) matter. Tissues are
soft fractions (partial volume over ~0.5 mm), labels are their argmax. u is a smooth random displacement field.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

TISSUES = ("background", "CSF", "grey_matter", "white_matter", "oedema", "necrotic_core", "enhancing_rim")
CHANNELS = ("T1", "T1ce", "T2", "FLAIR")

# Relative signal per tissue (rows, in TISSUES order) and channel (columns, in CHANNELS order), times 1000.
# T1: WM > GM > CSF; T1ce as T1 but the rim enhances; T2: CSF brightest, oedema/necrosis bright;
# FLAIR: CSF suppressed (dark), oedema brightest.
TISSUE_INTENSITIES = 1000.0 * np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.25, 0.27, 1.00, 0.15],  # CSF
        [0.55, 0.57, 0.62, 0.60],  # grey matter
        [0.80, 0.80, 0.42, 0.48],  # white matter
        [0.50, 0.52, 0.85, 0.95],  # oedema
        [0.30, 0.32, 0.90, 0.55],  # necrotic core
        [0.55, 1.10, 0.70, 0.75],  # enhancing rim
    ]
)

# Inside the head no voxel is allowed to reach 0, so "non-zero" is exactly the head mask.
INTENSITY_FLOOR = 1.0
PARTIAL_VOLUME_MM = 0.5
OEDEMA_EDGE_MM = 1.5
_CHUNK_POINTS = 1 << 20

# Lateral ventricles in the normalised head frame: centres and semi-axes (x: left, y: posterior, z: superior).
_VENTRICLE_CENTRES = np.array([[0.16, 0.02, 0.12], [-0.16, 0.02, 0.12]])
_VENTRICLE_SEMI_AXES = np.array([0.08, 0.36, 0.13])


@dataclass(frozen=True, eq=False)
class FourierField:
    """A smooth random field, a sum of plane waves: f(x) = sum_k amplitudes[k] * sin(frequencies[k] . x + phases[k])."""

    frequencies: np.ndarray  # (K, 3) angular frequencies (radians per unit of x)
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K,) for a scalar field, (K, D) for a D-vector field

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Evaluate the field at `points` (N, 3); returns (N,) or (N, D)."""
        waves = np.sin(points @ self.frequencies.T + self.phases)
        return waves @ self.amplitudes

    @property
    def bound(self) -> float:
        """An upper bound of |f(x)| over all x (the sum of the amplitudes' norms)."""
        amplitudes = self.amplitudes.reshape(len(self.amplitudes), -1)
        return float(np.linalg.norm(amplitudes, axis=1).sum())

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        num_waves: int,
        frequency_range: tuple[float, float],
        bound: float,
        dims: int | None = None,
    ) -> FourierField:
        """Draw waves with random directions, |frequency| in `frequency_range`, phases; scale so that `bound` holds."""
        directions = rng.normal(size=(num_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        frequencies = directions * rng.uniform(*frequency_range, size=(num_waves, 1))
        phases = rng.uniform(0.0, 2.0 * np.pi, size=num_waves)
        shape = (num_waves,) if dims is None else (num_waves, dims)
        amplitudes = rng.normal(size=shape)
        field = cls(frequencies, phases, amplitudes)
        scale = bound / field.bound if field.bound > 0 else 0.0
        return cls(frequencies, phases, amplitudes * scale)

    @classmethod
    def zero(cls, dims: int | None = None) -> FourierField:
        """A field that is 0 everywhere."""
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros((0,) if dims is None else (0, dims)))


def wavelength_to_frequency(wavelength_range_mm: tuple[float, float]) -> tuple[float, float]:
    """Angular frequency range (rad/mm) of a wavelength range (mm), low to high."""
    longest, shortest = max(wavelength_range_mm), min(wavelength_range_mm)
    return 2.0 * np.pi / longest, 2.0 * np.pi / shortest


@dataclass(frozen=True)
class Grid:
    """A voxel grid in world space: voxel index i lies at origin + direction @ (spacing * i) (LPS, mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]  # 3x3, column j = world unit vector of index axis j

    @classmethod
    def from_image(cls, image) -> Grid:
        """The grid of a SimpleITK image (index order i, j, k = SimpleITK's x, y, z)."""
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), _as_matrix(direction))

    @classmethod
    def from_props(cls, props: dict) -> Grid:
        """The grid of an array described by imageio `props` (spacing, origin, direction, shape of that array)."""
        return cls(
            tuple(int(s) for s in props["shape"]),
            tuple(float(s) for s in props["spacing"]),
            tuple(float(o) for o in props["origin"]),
            _as_matrix(np.asarray(props["direction"], dtype=float)),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction as a 3x3 numpy array."""
        return np.asarray(self.direction, dtype=float)

    @property
    def centre(self) -> np.ndarray:
        """World position of the grid's centre (midway between its outermost voxel centres)."""
        return self.index_to_world(np.asarray([(n - 1) / 2.0 for n in self.shape])[None])[0]

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """World positions (N, 3) of (possibly fractional) voxel indices (N, 3)."""
        scaled = np.asarray(indices, dtype=float) * np.asarray(self.spacing, dtype=float)
        return np.asarray(self.origin, dtype=float) + scaled @ self.direction_matrix.T

    def world_points(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """World positions (N, 3) of the voxels with first-axis index in [first, stop), in C order."""
        stop = self.shape[0] if stop is None else stop
        i, j, k = np.meshgrid(np.arange(first, stop), np.arange(self.shape[1]), np.arange(self.shape[2]), indexing="ij")
        return self.index_to_world(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))


def _as_matrix(direction: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in row) for row in direction)


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """Everything that defines one synthetic case: its anatomy, its contrast, its noise and its own grid."""

    case_id: str
    grid: Grid
    head_centre: np.ndarray  # (3,) world mm
    head_semi_axes: np.ndarray  # (3,) mm along world x (L), y (P), z (S)
    deformation: FourierField  # 3-vector displacement (mm) of (p - head_centre)
    gyri: FourierField  # folding of the grey/white boundary, a field of the unit direction from the head centre
    sulci: FourierField  # CSF intrusions into the pial surface, a field of the unit direction
    tumour_centre: np.ndarray  # (3,) world mm, in the undeformed frame
    tumour_radius: float  # mm; core < 0.45, rim < 0.8, oedema < 1.6 radii
    tumour_shape: FourierField  # relative radius modulation, a field of the unit direction from the tumour centre
    texture: FourierField  # relative intensity modulation tied to anatomy, of (p + u - head_centre) in mm
    bias: FourierField  # log of the multiplicative bias field, of (p - head_centre) in mm
    channel_gains: np.ndarray  # (4,) scanner gain per channel
    noise: float  # Rician noise standard deviation, relative to 1000 * gain; 0 = noise-free
    noise_seed: int


def tissue_fractions(case: PhantomCase, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue fractions (N, 7) in TISSUES order at world `points` (N, 3), and the hard head mask (N,)."""
    relative = points - case.head_centre
    return _fractions(case, relative + case.deformation(relative))


def _fractions(case: PhantomCase, deformed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions and head mask at positions already pulled back into the anatomy (relative to its centre)."""
    q = deformed / case.head_semi_axes
    r = np.linalg.norm(q, axis=1)
    head = r <= 1.0
    unit = q / np.maximum(r, 1e-9)[:, None]
    mm = float(np.mean(case.head_semi_axes))

    pial = 0.92 - np.maximum(case.sulci(unit), 0.0)
    brain = _inside((pial - r) * mm, PARTIAL_VOLUME_MM)
    white = _inside((0.74 + case.gyri(unit) - r) * mm, PARTIAL_VOLUME_MM)
    fissure = (
        _inside(1.0 - np.abs(deformed[:, 0]), PARTIAL_VOLUME_MM)
        * _inside((r - 0.45) * mm, PARTIAL_VOLUME_MM)
        * _inside((q[:, 2] + 0.3) * mm, PARTIAL_VOLUME_MM)
    )
    brain = brain * (1.0 - fissure)
    f_wm = np.minimum(white * (1.0 - fissure), brain)
    f_gm = brain - f_wm
    f_csf = 1.0 - brain

    ventricles = _ventricles(q, mm)
    f_csf = f_csf + ventricles * (f_gm + f_wm)
    f_gm, f_wm = f_gm * (1.0 - ventricles), f_wm * (1.0 - ventricles)

    distance = _tumour_distance(case, deformed + case.head_centre)
    radius = case.tumour_radius
    oedema = _inside((1.6 - distance) * radius, OEDEMA_EDGE_MM)
    solid = _inside((0.8 - distance) * radius, PARTIAL_VOLUME_MM)
    core = _inside((0.45 - distance) * radius, PARTIAL_VOLUME_MM)
    # Oedema is vasogenic: it spreads through white matter and less into cortex, never into CSF.
    take_wm, take_gm = oedema * f_wm, 0.5 * oedema * f_gm
    f_oed = take_wm + take_gm
    f_wm, f_gm = f_wm - take_wm, f_gm - take_gm
    keep = 1.0 - solid
    fractions = np.stack(
        [np.zeros_like(r), f_csf * keep, f_gm * keep, f_wm * keep, f_oed * keep, core, solid - core], axis=1
    )
    fractions[~head] = 0.0
    fractions[~head, 0] = 1.0
    return fractions, head


def _inside(signed_mm: np.ndarray, width_mm: float) -> np.ndarray:
    """Soft indicator of a region from a signed distance (positive inside), over a transition of `width_mm`."""
    return expit(signed_mm / width_mm)


def _ventricles(q: np.ndarray, mm: float) -> np.ndarray:
    """Soft indicator of the two lateral ventricles (the union of two ellipsoids)."""
    scale = mm * float(np.mean(_VENTRICLE_SEMI_AXES))
    inside = np.zeros(len(q))
    for centre in _VENTRICLE_CENTRES:
        rv = np.linalg.norm((q - centre) / _VENTRICLE_SEMI_AXES, axis=1)
        inside = np.maximum(inside, _inside((1.0 - rv) * scale, PARTIAL_VOLUME_MM))
    return inside


def _tumour_distance(case: PhantomCase, deformed_points: np.ndarray) -> np.ndarray:
    """Distance from the tumour centre in tumour radii, with a lumpy (direction-dependent) radius."""
    offset = deformed_points - case.tumour_centre
    length = np.linalg.norm(offset, axis=1)
    unit = offset / np.maximum(length, 1e-9)[:, None]
    return length / (case.tumour_radius * (1.0 + case.tumour_shape(unit)))


def phantom_intensities(case: PhantomCase, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free intensities (N, 4) in CHANNELS order and labels (N,) uint8 at world `points` (N, 3)."""
    relative = points - case.head_centre
    anatomy = relative + case.deformation(relative)
    fractions, head = _fractions(case, anatomy)
    modulation = np.exp(case.bias(relative)) * (1.0 + case.texture(anatomy))
    values = (fractions @ TISSUE_INTENSITIES) * case.channel_gains * modulation[:, None]
    values = np.where(head[:, None], np.maximum(values, INTENSITY_FLOOR), 0.0)
    labels = np.where(head, np.argmax(fractions[:, 1:], axis=1) + 1, 0).astype(np.uint8)
    return values, labels


def render_case(
    case: PhantomCase, grid: Grid | None = None, noise: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sample `case` on `grid` (default: its own): images (4, *grid.shape) float32 and labels (*grid.shape) uint8.

    Arrays are indexed like the grid (i, j, k), not SimpleITK's (k, j, i). `noise` overrides the case's noise level
    (0 gives the exact noise-free phantom). Background is exactly 0 in every channel; noise is added only inside
    the head, as Rician magnitude noise |I + sigma * (n1 + i n2)|, drawn from the case's own seed.
    """
    grid = case.grid if grid is None else grid
    noise = case.noise if noise is None else noise
    values, labels = _render_noise_free(case, grid)
    if noise > 0:
        values = _add_rician_noise(values, labels > 0, noise * 1000.0 * case.channel_gains, case.noise_seed)
    images = np.moveaxis(values.reshape(*grid.shape, len(CHANNELS)), -1, 0).astype(np.float32)
    return np.ascontiguousarray(images), labels.reshape(grid.shape)


def _render_noise_free(case: PhantomCase, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the phantom slab by slab along the first axis, to bound memory on large grids."""
    slab = max(1, _CHUNK_POINTS // max(1, grid.shape[1] * grid.shape[2]))
    parts = [
        phantom_intensities(case, grid.world_points(first, min(first + slab, grid.shape[0])))
        for first in range(0, grid.shape[0], slab)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _add_rician_noise(values: np.ndarray, head: np.ndarray, sigma: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    inside = values[head]
    real = inside + sigma * rng.standard_normal(inside.shape)
    imaginary = sigma * rng.standard_normal(inside.shape)
    noisy = values.copy()
    noisy[head] = np.maximum(np.hypot(real, imaginary), INTENSITY_FLOOR)
    return noisy
