"""SHA-256 of files and of streams being copied: one read loop for checkpoints, model export and install."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

BLOCK_SIZE = 1 << 20


def copy_with_sha256(source: BinaryIO, destination: BinaryIO | None = None) -> tuple[int, str]:
    """Read `source` to its end in blocks (writing each to `destination` if given); return (bytes, hex SHA-256)."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: source.read(BLOCK_SIZE), b""):
        digest.update(block)
        if destination is not None:
            destination.write(block)
        size += len(block)
    return size, digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return copy_with_sha256(f)[1]
