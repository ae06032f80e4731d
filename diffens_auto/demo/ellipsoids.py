"""Random 3D ellipsoid phantoms: the ELLIPSES prior of DDIP/D3IP (random ellipses, as in DIVal) in 3D.

A phantom is the sum of K ellipsoids with additive intensities, clipped at 0 and scaled so its peak is
`PEAK_INTENSITY` (the brain phantoms' white-matter scale):

    K           ~ Poisson(80), kept in [1, 120]
    intensity   ~ U(-0.4, 1.0), the first U(0.2, 1.0)    negative ones carve darker regions into brighter ones
    centre      uniform in the ball the smallest ellipsoid stays whole in   (R: the field-of-view radius)
    semi-axes   ~ 0.3 R Exp(1) each, kept in [1.5 voxels, 0.6 R] and small enough to keep the ellipsoid whole
                inside the field of view
    rotation    uniform on SO(3)

DIVal's 2D ELLIPSES draw Poisson(40) ellipses (at most 70) with intensities U(-0.4, 1.0) and semi-axes of
0.2 Exp(1) half-widths; in 3D those sizes fill a far smaller share of the volume, hence more and larger ellipsoids.

The field of view is the ball of radius R about the grid centre that stays 2 voxels inside the grid on every
side; outside it every voxel is exactly 0. Each ellipsoid's edge is a C1 ramp about 1.5 voxels wide across its
surface (a smoothstep of the first-order distance (rho - 1) / |grad rho|), so phantoms are free of staircase
aliasing. Noise, when asked for, is Rician magnitude noise inside the field of view, as for the brain phantoms.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffens_auto.demo.phantom import Grid

PEAK_INTENSITY = 1000.0
MEAN_NUM_ELLIPSOIDS = 80
MAX_NUM_ELLIPSOIDS = 120
INTENSITY_RANGE = (-0.4, 1.0)
MEAN_SEMI_AXIS = 0.3  # times the field-of-view radius
MAX_SEMI_AXIS = 0.6  # times the field-of-view radius
MIN_SEMI_AXIS_VOXELS = 1.5
EDGE_VOXELS = 1.5
FOV_MARGIN_VOXELS = 2.0

# World (LPS) directions of the array axes of "RAS" files, which read back unpermuted and unflipped.
_RAS_DIRECTION = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True, eq=False)
class EllipsoidPhantom:
    """One random ellipsoid phantom: its grid, its field of view and its ellipsoids (mm, about the grid centre)."""

    case_id: str
    grid: Grid
    fov_radius: float  # mm; the phantom is 0 outside this ball about the grid centre
    centres: np.ndarray  # (K, 3) world mm relative to the grid centre
    semi_axes: np.ndarray  # (K, 3) mm
    rotations: np.ndarray  # (K, 3, 3) column j = world direction of semi-axis j
    intensities: np.ndarray  # (K,) additive, before clipping and scaling
    edge_mm: float
    noise: float
    noise_seed: int


def ellipsoid_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Grid:
    """The axis-aligned RAS grid of `shape` voxels of `spacing` mm, centred on the world origin."""
    spacing_array = np.asarray(spacing, float)
    direction = np.asarray(_RAS_DIRECTION)
    origin = -direction @ (spacing_array * (np.asarray(shape) - 1) / 2.0)
    return Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing_array),
                tuple(float(o) for o in origin), _RAS_DIRECTION)


def field_of_view_radius(grid: Grid) -> float:
    """Radius (mm) of the field-of-view ball: FOV_MARGIN_VOXELS voxels inside the grid along every axis."""
    spacing = np.asarray(grid.spacing)
    half_extent = spacing * (np.asarray(grid.shape) - 1) / 2.0
    return float(np.min(half_extent) - FOV_MARGIN_VOXELS * spacing.max())


def sample_ellipsoid_phantom(case_id: str, rng: np.random.Generator, grid: Grid, noise: float) -> EllipsoidPhantom:
    """Draw the ellipsoids of one phantom on `grid` from `rng` (raises ValueError if the grid is too small)."""
    radius = field_of_view_radius(grid)
    smallest = MIN_SEMI_AXIS_VOXELS * max(grid.spacing)
    if MAX_SEMI_AXIS * radius < smallest:
        raise ValueError(
            f"The demo field of view {grid.shape} voxels x {grid.spacing} mm is too small for ellipsoid phantoms "
            "with a background margin; use a larger shape or spacing (e.g. --shape 24 24 24 --spacing 2 2 2)."
        )
    count = int(np.clip(rng.poisson(MEAN_NUM_ELLIPSOIDS), 1, MAX_NUM_ELLIPSOIDS))
    edge = EDGE_VOXELS * max(grid.spacing)
    # Edge ramp included, an ellipsoid reaches at most largest * (1 + edge / (2 smallest)) from its centre
    # (see _support_radius); capping its semi-axes by the room left to the field of view's border keeps it whole.
    reach = 1.0 + edge / (2.0 * smallest)
    centres = _random_in_ball(rng, np.full(count, radius - smallest * reach))
    room = (radius - np.linalg.norm(centres, axis=1)) / reach
    semi_axes = MEAN_SEMI_AXIS * radius * rng.exponential(size=(count, 3))
    semi_axes = np.clip(semi_axes, smallest, np.minimum(MAX_SEMI_AXIS * radius, room)[:, None])
    return EllipsoidPhantom(
        case_id=case_id,
        grid=grid,
        fov_radius=radius,
        centres=centres,
        semi_axes=semi_axes,
        rotations=_random_rotations(rng, count),
        intensities=_random_intensities(rng, count),
        edge_mm=edge,
        noise=float(noise),
        noise_seed=int(rng.integers(2**63 - 1)),
    )


def _random_intensities(rng: np.random.Generator, count: int) -> np.ndarray:
    """Additive intensities in INTENSITY_RANGE; the first is positive, so no phantom is blank."""
    return np.concatenate([rng.uniform(0.2, INTENSITY_RANGE[1], size=1), rng.uniform(*INTENSITY_RANGE, size=count - 1)])


def _support_radius(semi_axes: np.ndarray, edge: float) -> np.ndarray:
    """Radius (mm) of a ball about each centre that holds the ellipsoid and its whole edge ramp."""
    # The ramp is > 0 only where (rho - 1) * a_min < edge / 2 (|grad rho| <= 1 / a_min), i.e. inside
    # rho < 1 + edge / (2 a_min), whose farthest point lies a_max * (1 + edge / (2 a_min)) from the centre.
    largest, smallest = semi_axes.max(axis=1), semi_axes.min(axis=1)
    return largest * (1.0 + edge / (2.0 * smallest))


def _random_in_ball(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    """One point uniform in the ball of each radius."""
    directions = rng.normal(size=(len(radii), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    lengths = radii * np.cbrt(rng.uniform(size=len(radii)))
    return directions * lengths[:, None]


def _random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` rotation matrices uniform on SO(3), from uniformly random unit quaternions."""
    q = rng.normal(size=(count, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def ellipsoid_indicator(offsets: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray, edge: float) -> np.ndarray:
    """Smoothed indicator in [0, 1] of one ellipsoid at `offsets` (N, 3) mm from its centre: 1 inside, 0 outside."""
    scaled = (offsets @ rotation) / semi_axes  # rho = |scaled|; rho < 1 inside
    rho = np.linalg.norm(scaled, axis=1)
    gradient = np.linalg.norm((scaled / semi_axes) @ rotation.T, axis=1) / np.maximum(rho, 1e-12)
    # |grad rho| >= 1 / a_max everywhere; the bound keeps the centre (0 / 0) finite.
    distance = (rho - 1.0) / np.maximum(gradient, 1.0 / semi_axes.max())
    t = np.clip(0.5 - distance / edge, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def render_ellipsoid_phantom(phantom: EllipsoidPhantom, noise: float | None = None) -> np.ndarray:
    """Sample `phantom` on its grid: a float32 (*grid.shape) array, >= 0, exactly 0 outside the field of view.

    `noise` overrides the phantom's noise level (0 gives the exact noise-free phantom).
    """
    values = _clipped_sum(phantom, np.ones(len(phantom.intensities), bool))
    if not values.any():
        # Negative ellipsoids covered every positive one; the positive ones alone still make a phantom.
        values = _clipped_sum(phantom, phantom.intensities > 0)
    values *= PEAK_INTENSITY / values.max()
    noise = phantom.noise if noise is None else noise
    if noise > 0:
        grid = phantom.grid
        inside = np.linalg.norm(grid.world_points() - grid.centre, axis=1) <= phantom.fov_radius
        noisy = _add_rician_noise(values.ravel(), inside, noise * PEAK_INTENSITY, phantom.noise_seed)
        values = noisy.reshape(values.shape)
    return np.ascontiguousarray(values.astype(np.float32))


def _clipped_sum(phantom: EllipsoidPhantom, chosen: np.ndarray) -> np.ndarray:
    """max(0, sum of intensity x indicator) over the chosen ellipsoids, on the phantom's grid."""
    grid = phantom.grid
    total = np.zeros(grid.shape)
    reach = _support_radius(phantom.semi_axes, phantom.edge_mm)
    for k in np.flatnonzero(chosen):
        box = _index_box(grid, grid.centre + phantom.centres[k], reach[k])
        indices = np.stack(np.meshgrid(*(np.arange(b.start, b.stop) for b in box), indexing="ij"), axis=-1)
        offsets = grid.index_to_world(indices.reshape(-1, 3)) - grid.centre - phantom.centres[k]
        inside = ellipsoid_indicator(offsets, phantom.semi_axes[k], phantom.rotations[k], phantom.edge_mm)
        total[box] += phantom.intensities[k] * inside.reshape(indices.shape[:3])
    return np.maximum(total, 0.0)


def _index_box(grid: Grid, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice]:
    """The grid's index ranges that hold every voxel within `radius` mm of the world point `centre`."""
    # An orthonormal direction maps a world ball to half-widths radius / spacing along the index axes.
    spacing = np.asarray(grid.spacing)
    index = grid.direction_matrix.T @ (centre - np.asarray(grid.origin)) / spacing
    lower = np.maximum(np.floor(index - radius / spacing), 0).astype(int)
    upper = np.minimum(np.ceil(index + radius / spacing) + 1, grid.shape).astype(int)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(lower, upper))


def _add_rician_noise(values: np.ndarray, inside: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """|I + sigma (n1 + i n2)| inside the field of view; outside stays exactly 0."""
    rng = np.random.default_rng(seed)
    real = values[inside] + sigma * rng.standard_normal(int(inside.sum()))
    imaginary = sigma * rng.standard_normal(int(inside.sum()))
    noisy = values.copy()
    noisy[inside] = np.hypot(real, imaginary)
    return noisy
