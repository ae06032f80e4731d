"""Small synthetic images for tests, written with SimpleITK."""
import numpy as np
import SimpleITK as sitk


def write_sitk(array_xyz, path, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """Write an (X, Y, Z) array as an image file with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def blob(shape, seed):
    """A smooth positive blob with a zero background margin."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grid)
    array = np.where(r2 < 0.6, 100 + 50 * np.cos(3 * grid[0]) + 10 * rng.random(shape), 0.0)
    return array.astype(np.float32)
