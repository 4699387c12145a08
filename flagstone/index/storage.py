"""Versioned, crash-safe index folders.

Layout of an index folder::

    CURRENT              one line: the name of the live generation, e.g. "gen-000003"
    gen-000003/
      manifest.json      format, version, index kind, parameters, and size, SHA-256, dtype, shape of every array
      <name>.npy         one file per array (loadable memory-mapped)

``save`` writes a complete new generation, fsyncs it, then replaces CURRENT with an atomic rename and only
then deletes older generations. A kill at any moment leaves CURRENT naming a complete generation: the old
index or the new one, never a mix.

``load`` checks every array's SHA-256 by default, memory-mapped or not (hashing runs at about 1.5 GB/s, so a
75 MB array costs some 50 ms). With ``verify=False`` the manifest, file sizes and .npy headers are still
checked, so a damaged folder gives a :class:`CorruptIndexError` rather than a numpy error; only damage
inside the array data goes unnoticed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tokenize
from pathlib import Path
from typing import Any

import numpy as np

from flagstone._io import atomic_write, read_format_json
from flagstone.errors import CorruptIndexError, IndexFormatError

__all__ = ["CorruptIndexError", "IndexFormatError", "index_files", "load_index", "save_index"]

FORMAT = "flagstone-index"
VERSION = 1
_GENERATION = re.compile(r"gen-[0-9]{6,}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        entries[name] = {"file": file.name, "bytes": file.stat().st_size, "sha256": _sha256(file),
                         "dtype": np.asarray(array).dtype.str, "shape": list(np.shape(array))}
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


def load_index(folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True,
               always_mmap: tuple[str, ...] = ()) -> tuple[str, dict, dict[str, np.ndarray]]:
    """Read the current generation: (kind, params, arrays). ``verify`` checks every array's SHA-256; the
    manifest, sizes and .npy headers are checked either way (:class:`CorruptIndexError` names the file).
    Arrays named in ``always_mmap`` are memory-mapped even when ``mmap`` is false."""
    gen = _current_generation(Path(folder))
    manifest = _read_manifest(gen)
    arrays = {name: _read_array(gen / entry["file"], entry, mmap=mmap or name in always_mmap, verify=verify)
              for name, entry in manifest["arrays"].items()}
    return manifest["kind"], manifest["params"], arrays


def index_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files of the current generation: its manifest, then one .npy per array."""
    gen = _current_generation(Path(folder))
    return [gen / "manifest.json"] + [gen / entry["file"] for entry in _read_manifest(gen)["arrays"].values()]


def _current_generation(root: Path) -> Path:
    if not root.is_dir():
        raise IndexFormatError(f"index folder not found: {root}")
    current = root / "CURRENT"
    if not current.is_file():
        raise IndexFormatError(f"{root} is not a Flagstone index (no CURRENT file)")
    name = current.read_bytes().decode("ascii", errors="replace").strip()
    # only a generation name: a garbled CURRENT must not send the reader to some other folder
    if not _GENERATION.fullmatch(name):
        raise CorruptIndexError(f"{current}: garbled, expected a generation name such as gen-000001")
    gen = root / name
    if not gen.is_dir():
        raise CorruptIndexError(f"{current} names {name}, which is missing")
    return gen


def _read_manifest(gen: Path) -> dict[str, Any]:
    """The manifest, with every field the reader relies on checked (CorruptIndexError otherwise)."""
    file = gen / "manifest.json"
    manifest = read_format_json(file, format_name=FORMAT, version=VERSION, what="a Flagstone index",
                                kind="index", error=IndexFormatError)
    arrays = manifest.get("arrays")
    if not isinstance(manifest.get("kind"), str) or not isinstance(manifest.get("params"), dict) or \
            not isinstance(arrays, dict):
        raise CorruptIndexError(f"{file}: malformed manifest (needs kind, params and arrays)")
    for name, entry in arrays.items():
        valid = (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                 and entry["file"] == f"{name}.npy" and isinstance(entry.get("bytes"), int)
                 and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"]))
        if not valid:
            raise CorruptIndexError(f"{file}: malformed entry for array {name!r}")
    return manifest


def _read_array(file: Path, entry: dict[str, Any], *, mmap: bool, verify: bool) -> np.ndarray:
    """One array, after checking its size, its .npy header and (with ``verify``) its SHA-256."""
    if not file.is_file():
        raise CorruptIndexError(f"{file}: missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise CorruptIndexError(f"{file}: {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
    if verify and _sha256(file) != entry["sha256"]:
        raise CorruptIndexError(f"{file}: checksum mismatch, the index is corrupt")
    shape, dtype = _check_header(file, size)
    # manifests written before dtype and shape were recorded lack them; the size check above still applies
    if "dtype" in entry and (dtype.str != entry["dtype"] or list(shape) != entry.get("shape")):
        raise CorruptIndexError(f"{file}: header says {dtype.str} {list(shape)}, the manifest "
                                f"{entry['dtype']} {entry.get('shape')}")
    return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)


def _check_header(file: Path, size: int) -> tuple[tuple[int, ...], np.dtype]:
    """Parse the .npy header ourselves so that damage is a CorruptIndexError, not whatever numpy raises
    (ValueError, or tokenize.TokenError for some garbage); also check that it accounts for every byte."""
    fmt = np.lib.format
    try:
        with file.open("rb") as handle:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(handle)
            else:  # np.save writes 3.0 only for unicode field names, which no index has
                raise ValueError(f"unsupported .npy version {version}")
            offset = handle.tell()
    except (ValueError, TypeError, SyntaxError, UnicodeDecodeError, tokenize.TokenError) as exc:
        detail = str(exc.args[0] if exc.args else exc).splitlines()[0][:60]
        raise CorruptIndexError(f"{file}: damaged .npy header ({detail})") from None
    if dtype.hasobject:
        raise CorruptIndexError(f"{file}: damaged .npy header (object arrays are never written)")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != size:
        raise CorruptIndexError(f"{file}: the .npy header describes {expected} bytes, the file has {size}")
    return shape, dtype
