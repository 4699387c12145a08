"""Versioned, crash-safe index folders.

Layout of an index folder::

    CURRENT              one line: the name of the live generation, e.g. "gen-000003"
    gen-000003/
      manifest.json      format, version, index kind, parameters, and size + SHA-256 of every array
      <name>.npy         one file per array (loadable memory-mapped)

``save`` writes a complete new generation, fsyncs it, then replaces CURRENT with an atomic rename and only
then deletes older generations. A kill at any moment leaves CURRENT naming a complete generation: the old
index or the new one, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from flagstone._io import atomic_write, read_format_json
from flagstone.errors import FlagstoneError

FORMAT = "flagstone-index"
VERSION = 1


class IndexFormatError(FlagstoneError):
    """A folder is not a Flagstone index, is from an unsupported version, or is corrupt."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_index(folder: str | os.PathLike[str], kind: str, params: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write a new generation holding ``arrays`` and make it current; returns its folder."""
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise IndexFormatError(f"{root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()) and not (root / "CURRENT").is_file():
        raise IndexFormatError(f"{root} is a non-empty folder that is not a Flagstone index; refusing to write")
    existing = sorted(p.name for p in root.glob("gen-*") if p.is_dir())
    number = int(existing[-1].split("-")[1]) + 1 if existing else 1
    gen = root / f"gen-{number:06d}"
    gen.mkdir()
    entries = {}
    for name, array in arrays.items():
        file = gen / f"{name}.npy"
        with file.open("wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        entries[name] = {"file": file.name, "bytes": file.stat().st_size, "sha256": _sha256(file)}
    manifest = {"format": FORMAT, "version": VERSION, "kind": kind, "params": params, "arrays": entries}
    with atomic_write(gen / "manifest.json") as handle:
        json.dump(manifest, handle, indent=2)
    _fsync_dir(gen)
    with atomic_write(root / "CURRENT") as handle:
        handle.write(gen.name + "\n")
    _fsync_dir(root)
    for old in root.glob("gen-*"):
        if old.name != gen.name:
            shutil.rmtree(old, ignore_errors=True)
    return gen


def load_index(folder: str | os.PathLike[str], *, mmap: bool = False,
               verify: bool = True) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Read the current generation: (kind, params, arrays). ``verify`` checks every array's SHA-256."""
    root = Path(folder)
    if not root.is_dir():
        raise IndexFormatError(f"index folder not found: {root}")
    current = root / "CURRENT"
    if not current.is_file():
        raise IndexFormatError(f"{root} is not a Flagstone index (no CURRENT file)")
    gen = root / current.read_text().strip()
    manifest = read_format_json(gen / "manifest.json", format_name=FORMAT, version=VERSION,
                                what="a Flagstone index", kind="index", error=IndexFormatError)
    arrays = {}
    for name, entry in manifest["arrays"].items():
        file = gen / entry["file"]
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise IndexFormatError(f"{file}: missing or truncated (expected {entry['bytes']} bytes)")
        if verify and _sha256(file) != entry["sha256"]:
            raise IndexFormatError(f"{file}: checksum mismatch, the index is corrupt")
        arrays[name] = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    return manifest["kind"], manifest["params"], arrays
