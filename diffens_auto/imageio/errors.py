"""The one error type of the I/O stage: a file that cannot become a 3D canonical volume."""
import os

from diffens_auto.errors import DiffensError


class ImageReadError(DiffensError, ValueError):
    """An image file cannot be read as a 3D volume; the message names the file, what is wrong and the fix."""


def read_error(path: str | os.PathLike, problem: str, fix: str) -> ImageReadError:
    """Build an ImageReadError in the stage's one message format."""
    return ImageReadError(f"Cannot read image '{path}': {problem}. Fix: {fix}.")
