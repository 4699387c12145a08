"""Damaged index folders: every kind of damage is one clear Flagstone error naming the file, memory-mapped or
not, checksummed or not (issue 17)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flagstone.errors import CorruptIndexError, DataError, IndexFormatError
from flagstone.index import load, verify
from flagstone.index.flat import FlatIndex
from flagstone.index.storage import load_index

DIM, N = 16, 200


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FlatIndex(DIM)
    index.add([f"d{i}" for i in range(N)], vectors)
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def generation(folder: Path) -> Path:
    return folder / (folder / "CURRENT").read_text().strip()


def flip_byte(file: Path, position: int) -> None:
    raw = bytearray(file.read_bytes())
    raw[position] ^= 0xFF
    file.write_bytes(bytes(raw))


def edit_header(file: Path, old: bytes, new: bytes) -> None:
    """Replace text inside the .npy header, keeping the file's length (as a bit flip in the header would)."""
    raw = file.read_bytes()
    assert len(old) == len(new) and old in raw[:128]
    file.write_bytes(raw.replace(old, new, 1))


@pytest.mark.parametrize("mmap", [False, True])
def test_a_flipped_vector_byte_is_caught_by_default_also_when_memory_mapped(folder, mmap):
    codes = generation(folder) / "codes.npy"
    flip_byte(codes, codes.stat().st_size - 7)  # inside the vectors: the header stays valid
    with pytest.raises(CorruptIndexError, match=r"codes\.npy: checksum mismatch") as caught:
        load(folder, mmap=mmap)
    assert isinstance(caught.value, DataError)
    with pytest.raises(CorruptIndexError, match=r"codes\.npy: checksum mismatch"):
        FlatIndex.load(folder, mmap=mmap)
    # verify=False is the documented way to skip the hash: damage inside the data is then not noticed
    assert len(load(folder, mmap=mmap, verify=False)) == N


HEADER_DAMAGE = {
    "garbage": (b"{'descr': ", b"garbage!!!"),  # numpy raised tokenize.TokenError, not even a ValueError
    "shape": (f"({N}, {DIM})".encode(), f"({N + 1}, {DIM})".encode()),  # numpy raised ValueError
    "dtype": (b"'<f4'", b"'<i4'"),  # same size: only the manifest's dtype tells
    "magic": (b"\x93NUMPY", b"\x93NUMPZ"),
}


@pytest.mark.parametrize("damage", sorted(HEADER_DAMAGE))
@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("verify_sums", [True, False])
def test_a_damaged_npy_header_is_a_clear_error_with_or_without_checksums(folder, damage, mmap, verify_sums):
    edit_header(generation(folder) / "codes.npy", *HEADER_DAMAGE[damage])
    with pytest.raises(CorruptIndexError, match=r"codes\.npy: "):
        load(folder, mmap=mmap, verify=verify_sums)


def _truncate(folder: Path) -> None:
    codes = generation(folder) / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-40])


def _manifest(folder: Path, change) -> None:
    file = generation(folder) / "manifest.json"
    manifest = json.loads(file.read_text())
    change(manifest)
    file.write_text(json.dumps(manifest))


FOLDER_DAMAGE = {
    "truncated": (_truncate, r"codes\.npy: \d+ bytes, the manifest says \d+ \(truncated"),
    "missing array": (lambda f: (generation(f) / "codes.npy").unlink(), r"codes\.npy: missing"),
    "CURRENT binary": (lambda f: (f / "CURRENT").write_bytes(b"\xff\xfe\x00gen"), r"CURRENT: garbled"),
    "CURRENT outside": (lambda f: (f / "CURRENT").write_text("../../etc\n"), r"CURRENT: garbled"),
    "CURRENT stale": (lambda f: (f / "CURRENT").write_text("gen-000042\n"), r"CURRENT names gen-000042, which is"),
    "manifest not JSON": (lambda f: (generation(f) / "manifest.json").write_text('{"format": '),
                          r"manifest\.json: missing or unreadable"),
    "manifest arrays": (lambda f: _manifest(f, lambda m: m.update(arrays=["codes"])), r"malformed manifest"),
    "manifest entry": (lambda f: _manifest(f, lambda m: m["arrays"]["codes"].pop("sha256")),
                       r"malformed entry for array 'codes'"),
    "manifest path": (lambda f: _manifest(f, lambda m: m["arrays"]["codes"].update(file="../codes.npy")),
                      r"malformed entry for array 'codes'"),
    "array dropped": (lambda f: _manifest(f, lambda m: m["arrays"].pop("codes")),
                      r"does not fit a flat index \(KeyError"),
    "params dropped": (lambda f: _manifest(f, lambda m: m.update(params={})), r"does not fit a flat index"),
}


@pytest.mark.parametrize("damage", sorted(FOLDER_DAMAGE))
@pytest.mark.parametrize("mmap", [False, True])
def test_damaged_folders_give_one_flagstone_error(folder, damage, mmap):
    change, message = FOLDER_DAMAGE[damage]
    change(folder)
    for verify_sums in (True, False):
        with pytest.raises(IndexFormatError, match=message):
            load(folder, mmap=mmap, verify=verify_sums)
    with pytest.raises(IndexFormatError, match=message):
        verify(folder)


def test_manifests_without_dtype_and_shape_still_load(folder):
    """Folders saved before dtype and shape were recorded keep loading (the size and header checks remain)."""
    def strip(manifest):
        for entry in manifest["arrays"].values():
            del entry["dtype"], entry["shape"]

    _manifest(folder, strip)
    assert len(load(folder, mmap=True)) == N
    edit_header(generation(folder) / "codes.npy", *HEADER_DAMAGE["shape"])
    with pytest.raises(CorruptIndexError, match="the .npy header describes"):
        load(folder, verify=False)


def test_the_manifest_records_dtype_and_shape(folder):
    manifest = json.loads((generation(folder) / "manifest.json").read_text())
    assert manifest["arrays"]["codes"]["dtype"] == "<f4" and manifest["arrays"]["codes"]["shape"] == [N, DIM]
    kind, _, arrays = load_index(folder, mmap=True)
    assert kind == "flat" and isinstance(arrays["codes"], np.memmap) and arrays["codes"].shape == (N, DIM)


def test_verify_lists_the_files_it_checked(folder):
    gen = generation(folder)
    assert verify(folder) == [gen / "manifest.json", gen / "id_bytes.npy", gen / "id_offsets.npy",
                                      gen / "id_hashes.npy", gen / "id_hash_rows.npy", gen / "codes.npy"]


def test_a_retriever_passes_verify_through_to_its_indexes(tmp_path):
    from flagstone.retrieval.retriever import Retriever, verify_folder

    retriever = Retriever(None, signals=["bm25"])
    retriever.add(["a", "b", "c"], ["zinc lozenges and colds", "neutron stars", "honey for a sore throat"])
    retriever.save(tmp_path / "r")
    names = {p.name for p in verify_folder(tmp_path / "r")}
    assert {"retriever.json", "bm25.json", "documents.jsonl", "manifest.json"} <= names
    arrays = sorted(generation(tmp_path / "r" / "indexes" / "bm25").glob("*.npy"), key=lambda p: p.stat().st_size)
    flip_byte(arrays[-1], arrays[-1].stat().st_size - 1)
    for mmap in (False, True):
        with pytest.raises(CorruptIndexError, match=f"{arrays[-1].name}: checksum mismatch"):
            Retriever.load(tmp_path / "r", mmap=mmap)
        assert len(Retriever.load(tmp_path / "r", mmap=mmap, verify=False)) == 3
    with pytest.raises(CorruptIndexError, match="checksum mismatch"):
        verify_folder(tmp_path / "r")
