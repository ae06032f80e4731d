"""Install a model zip into diffens_results (`diffens_install_pretrained_model_from_zip`).

Nothing is written unless everything checks out: every member path is relative and stays inside the results
folder, the members are exactly the manifest's files, each file's size and SHA-256 equal the manifest's, and no
existing file with the same path differs (unless overwrite=True). Files are staged beside their destinations and
renamed into place only after all of them verified, so a corrupt zip installs no file at all. Files
already present with the same bytes are left alone, so installing twice is harmless. The manifest itself is
packing information and is not installed.
"""
from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path, PurePosixPath

from diffens_auto import paths
from diffens_auto.atomic import atomic_path
from diffens_auto.dataset.naming import DatasetNotFoundError, dataset_id
from diffens_auto.hashing import copy_with_sha256, file_sha256
from diffens_auto.model_sharing.export import (MANIFEST_FILE, MANIFEST_FORMAT_VERSION, ModelSharingError,
                                               safe_member_path)


def read_manifest(archive: zipfile.ZipFile, zip_file: Path) -> dict:
    """The zip's manifest, after checking every member path is safe and the members are exactly its files."""
    names = archive.namelist()
    for name in names:
        safe_member_path(name, str(zip_file))
    if len(set(names)) != len(names):
        raise ModelSharingError(f"{zip_file}: a path occurs twice in the zip. Fix: export the model again.")
    manifests = [n for n in names if PurePosixPath(n).name == MANIFEST_FILE]
    if len(manifests) != 1 or len(PurePosixPath(manifests[0]).parts) != 2:
        raise ModelSharingError(f"{zip_file}: not a diffens_auto model zip (it needs exactly one "
                                f"DatasetXXX_Name/{MANIFEST_FILE}). Fix: make it with diffens_export_model_to_zip.")
    dataset_name = PurePosixPath(manifests[0]).parts[0]
    try:
        dataset_id(dataset_name)
        manifest = json.loads(archive.read(manifests[0]).decode("utf-8"))
        files = {str(entry["path"]): entry for entry in manifest["files"]}
        for entry in files.values():
            if not isinstance(entry["sha256"], str) or not isinstance(entry["size"], int):
                raise ValueError(f"file entry {entry} needs a sha256 text and a size in bytes")
    except (DatasetNotFoundError, ValueError, KeyError, TypeError) as e:
        raise ModelSharingError(f"{zip_file}: unreadable manifest {manifests[0]} ({e}). Fix: export the model "
                                "again.") from None
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > MANIFEST_FORMAT_VERSION:
        raise ModelSharingError(f"{zip_file}: manifest format {version!r} (made by diffens_auto "
                                f"{manifest.get('diffens_auto_version')}) is not one this version reads (up to "
                                f"{MANIFEST_FORMAT_VERSION}). Fix: update diffens_auto, or export the model again.")
    for name in files:
        if not safe_member_path(name, f"{zip_file} manifest").parts[0] == dataset_name:
            raise ModelSharingError(f"{zip_file}: manifest file {name!r} lies outside {dataset_name}/. Fix: export "
                                    "the model again.")
    members = {n for n in names if not n.endswith("/") and n != manifests[0]}
    unlisted, absent = sorted(members - set(files)), sorted(set(files) - members)
    if unlisted or absent:
        raise ModelSharingError(f"{zip_file}: the zip does not match its manifest (not listed: {unlisted[:5]}, "
                                f"missing: {absent[:5]}). Fix: export the model again; do not edit the zip.")
    manifest["files"] = files
    return manifest


def _conflicts(manifest: dict, results: Path) -> tuple[list[str], list[str]]:
    """(paths to write, paths whose existing file differs from the zip's); identical files need nothing."""
    to_write, different = [], []
    for name, entry in sorted(manifest["files"].items()):
        destination = results / name
        if destination.is_dir():
            raise ModelSharingError(f"{destination} is a folder, but the zip installs a file there. Fix: move "
                                    "that folder away.")
        if not destination.exists():
            to_write.append(name)
        elif file_sha256(destination) != entry["sha256"]:
            different.append(name)
            to_write.append(name)
    return to_write, different


def _extract_verified(archive: zipfile.ZipFile, name: str, entry: dict, tmp: Path, zip_file: Path) -> None:
    """Copy member `name` to `tmp`, refusing it unless its size and SHA-256 are the manifest's."""
    if archive.getinfo(name).file_size != entry["size"]:
        raise ModelSharingError(f"{zip_file}: {name} is {archive.getinfo(name).file_size} bytes, the manifest says "
                                f"{entry['size']}. The zip is damaged or was altered. Fix: get the zip again.")
    with archive.open(name) as member, open(tmp, "wb") as out:
        _, sha256 = copy_with_sha256(member, out)
    if sha256 != entry["sha256"]:
        raise ModelSharingError(f"{zip_file}: {name} does not match the manifest's SHA-256 (the zip is damaged or "
                                "was altered); nothing was installed. Fix: get the zip again.")


def install_model_from_zip(zip_file, overwrite: bool = False) -> list[Path]:
    """Extract a model zip into diffens_results after verifying it; returns every file of the model there."""
    zip_file = Path(zip_file)
    if not zip_file.is_file():
        raise ModelSharingError(f"{zip_file}: no such file. Fix: give the path of a zip made by "
                                "diffens_export_model_to_zip.")
    results = paths.results_folder()
    try:
        archive = zipfile.ZipFile(zip_file)
    except zipfile.BadZipFile as e:
        raise ModelSharingError(f"{zip_file}: not a zip file ({e}). Fix: get the zip again.") from None
    with archive:
        manifest = read_manifest(archive, zip_file)
        to_write, different = _conflicts(manifest, results)
        if different and not overwrite:
            shown = ", ".join(str(results / n) for n in different[:5])
            more = f" and {len(different) - 5} more" if len(different) > 5 else ""
            raise ModelSharingError(f"{len(different)} file(s) already exist with other contents: {shown}{more}. "
                                    "Fix: remove them (e.g. move the old model folder away), or install with "
                                    "--overwrite to replace them.")
        try:
            with contextlib.ExitStack() as staged:  # renames happen only when every file verified
                for name in to_write:
                    tmp = staged.enter_context(atomic_path(results / name))
                    _extract_verified(archive, name, manifest["files"][name], tmp, zip_file)
        except zipfile.BadZipFile as e:
            raise ModelSharingError(f"{zip_file}: damaged zip ({e}); nothing was installed. Fix: get the zip "
                                    "again.") from None
    return [results / name for name in sorted(manifest["files"])]
