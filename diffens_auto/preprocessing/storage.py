"""The preprocessed cases on disk: one folder per plans, four files per case, the JSON written last.

    <preprocessed>/<DatasetXXX_Name>/<data_identifier>/
        CASE.b2nd                # float32 (C, X, Y, Z), normalised, at the target spacing
        CASE_mask.b2nd           # uint8 (X, Y, Z), foreground at the target spacing
        CASE_mask_original.b2nd  # uint8 (X, Y, Z), foreground at the original resolution, crop region only
        CASE.json                # properties (see preprocessor.py); its presence marks a finished case

Every file is written to a temporary name beside it and renamed, so a file exists complete or not at all.
Arrays are blosc2 NDArrays in isotropic chunks (up to 64^3 voxels, one channel) made of 16^3-voxel blocks: the
2D experts read slices in all three planes and a block is the unit blosc2 decompresses, so every plane costs
the same and an axial, coronal or sagittal slice decompresses at most 16 slices' worth of data.
"""
from __future__ import annotations

import json
from pathlib import Path

import blosc2
import numpy as np

from diffens_auto.atomic import atomic_path, atomic_write_json
from diffens_auto.errors import MissingFileError

CHUNK_EDGE = 64
BLOCK_EDGE = 16
_TEMP_GLOB = ".*.tmp*"  # atomic_path's temporary names: ".<name>.<random>.tmp<suffixes>"


def case_paths(folder: str | Path, case_id: str) -> dict[str, Path]:
    """Return the paths of one case's files: data, mask, mask_original, properties."""
    folder = Path(folder)
    return {"data": folder / f"{case_id}.b2nd", "mask": folder / f"{case_id}_mask.b2nd",
            "mask_original": folder / f"{case_id}_mask_original.b2nd", "properties": folder / f"{case_id}.json"}


def chunks_and_blocks(shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return (chunks, blocks) for an (X, Y, Z) or (C, X, Y, Z) array: one channel per chunk, isotropic blocks."""
    spatial = tuple(int(s) for s in shape[-3:])
    chunks = tuple(min(s, CHUNK_EDGE) for s in spatial)
    blocks = tuple(min(s, BLOCK_EDGE) for s in spatial)
    if len(shape) == 4:
        return (1,) + chunks, (1,) + blocks
    return chunks, blocks


def write_array(array: np.ndarray, path: str | Path) -> None:
    """Write `array` atomically as a blosc2 NDArray file (zstd, byte shuffle, single-threaded for pool workers)."""
    array = np.ascontiguousarray(array)
    chunks, blocks = chunks_and_blocks(array.shape)
    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=5, filters=[blosc2.Filter.SHUFFLE], nthreads=1)
    with atomic_path(path) as tmp:
        stored = blosc2.asarray(array, urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)
        del stored  # release the file before it is renamed


def read_array(path: str | Path, mmap: bool = False):
    """Open a blosc2 array file: a lazily decompressing, slicable NDArray if `mmap`, else a numpy array."""
    # One decompression thread: readers are usually many data-loader processes already.
    options = {"mmap_mode": "r"} if mmap else {}
    array = blosc2.open(str(path), mode="r", dparams=blosc2.DParams(nthreads=1), **options)
    return array if mmap else array[...]


def save_case(folder: str | Path, case_id: str, data: np.ndarray, mask: np.ndarray, *, mask_original: np.ndarray,
              properties: dict) -> None:
    """Write one preprocessed case; the properties JSON goes last so that it marks a complete case."""
    paths = case_paths(folder, case_id)
    paths["properties"].unlink(missing_ok=True)  # an overwritten case is unfinished until its new JSON lands
    write_array(np.asarray(data, dtype=np.float32), paths["data"])
    write_array(np.asarray(mask, dtype=np.uint8), paths["mask"])
    write_array(np.asarray(mask_original, dtype=np.uint8), paths["mask_original"])
    atomic_write_json(properties, paths["properties"])


def load_properties(folder: str | Path, case_id: str) -> dict:
    """Return the properties of a finished case."""
    path = case_paths(folder, case_id)["properties"]
    if not path.is_file():
        raise MissingFileError(f"{path} not found: case {case_id} is not preprocessed in {Path(folder)}. "
                                "Fix: run diffens_plan_and_preprocess (or diffens_preprocess) for this dataset.")
    return json.loads(path.read_text(encoding="utf-8"))


def load_case(folder: str | Path, case_id: str, mmap: bool = True):
    """Return (data (C, X, Y, Z), mask (X, Y, Z), properties) of a finished case.

    With `mmap` the arrays are memory-mapped blosc2 NDArrays (slicing one decompresses only the blocks it touches
    and returns numpy); without, numpy arrays (float32 data, uint8 mask).
    """
    properties = load_properties(folder, case_id)
    paths = case_paths(folder, case_id)
    return read_array(paths["data"], mmap), read_array(paths["mask"], mmap), properties


def load_mask_original(folder: str | Path, case_id: str) -> np.ndarray:
    """Return the original-resolution foreground (uint8, crop region) that inversion needs."""
    load_properties(folder, case_id)  # a clear error if the case is not finished
    return read_array(case_paths(folder, case_id)["mask_original"])


def is_case_finished(folder: str | Path, case_id: str, preprocessing: dict | None = None,
                     stamps: list | None = None) -> bool:
    """True if all files of the case exist (its JSON last); with `preprocessing` / `stamps`, also if it was made
    with those settings from raw files of those sizes and modification times."""
    paths = case_paths(folder, case_id)
    if not all(p.is_file() for p in paths.values()):
        return False
    if preprocessing is None and stamps is None:
        return True
    try:
        stored = json.loads(paths["properties"].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return ((preprocessing is None or stored.get("preprocessing") == preprocessing)
            and (stamps is None or stored.get("file_stamps") == stamps))


def finished_cases(folder: str | Path) -> list[str]:
    """Return the sorted ids of the finished cases in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if is_case_finished(folder, p.stem))


def remove_temporary_files(folder: str | Path) -> list[Path]:
    """Delete temporary files an interrupted (killed) run left in `folder`; return them."""
    folder = Path(folder)
    stale = [p for p in folder.glob(_TEMP_GLOB) if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
