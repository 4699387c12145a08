"""`flagstone index verify`, and `--no-verify` on the commands that load a saved folder (issue 17): a damaged
folder is one line `flagstone: error: <file>: ...` with status 2, memory-mapped or not."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flagstone.cli import main
from flagstone.index.flat import FlatIndex
from flagstone.retrieval.retriever import Retriever
from tests.helpers import REPO

DOCS = {"d1": "Zinc lozenges shorten colds.", "d2": "Bees dance to show where flowers are.",
        "d3": "Neutron stars are collapsed cores."}


def generation(index_folder: Path) -> Path:
    return index_folder / (index_folder / "CURRENT").read_text().strip()


def flip_last_byte(file: Path) -> None:
    raw = bytearray(file.read_bytes())
    raw[-1] ^= 0xFF  # inside the array data, so the .npy header stays valid
    file.write_bytes(bytes(raw))


def damage_header(file: Path) -> None:
    raw = file.read_bytes()
    file.write_bytes(raw.replace(b"{'descr': ", b"garbage!!!", 1))


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flagstone: error: "), captured.err
    return lines[0]


@pytest.fixture(scope="module")
def saved_dense(tmp_path_factory, minilm) -> Path:
    """A folder as `flagstone index build` writes it (bundled model, flat dense index), built once."""
    folder = tmp_path_factory.mktemp("dense") / "r"
    retriever = Retriever(minilm, signals=["dense"], dense_index="flat")
    retriever.add(list(DOCS), list(DOCS.values()))
    retriever.save(folder)
    return folder


@pytest.fixture
def dense(saved_dense, tmp_path) -> Path:
    return Path(shutil.copytree(saved_dense, tmp_path / "dense"))


@pytest.fixture
def lexical(tmp_path) -> Path:
    """A BM25-only retriever folder: no model needed."""
    retriever = Retriever(None, signals=["bm25"])
    retriever.add(list(DOCS), list(DOCS.values()))
    retriever.save(tmp_path / "lexical")
    return tmp_path / "lexical"


def test_index_search_and_describe_verify_checksums_with_mmap(dense, capsys):
    vectors = generation(dense / "indexes" / "dense") / "codes.npy"
    flip_last_byte(vectors)
    # before issue 17, --mmap skipped the checksums and served the damaged vectors
    assert main(["index", "search", str(dense), "-q", "neutron stars", "--mmap", "--quiet"]) == 2
    assert f"{vectors}: checksum mismatch" in one_error_line(capsys)
    assert main(["index", "search", str(dense), "-q", "neutron stars", "--quiet"]) == 2
    assert "checksum mismatch" in one_error_line(capsys)
    assert main(["index", "describe", str(dense)]) == 2
    assert f"{vectors}: checksum mismatch" in one_error_line(capsys)
    # --no-verify skips the hash, as documented
    assert main(["index", "search", str(dense), "-q", "neutron stars", "--mmap", "--no-verify", "--quiet"]) == 0
    assert "neutron stars" in capsys.readouterr().out
    assert main(["index", "describe", str(dense), "--no-verify"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 3


def test_no_verify_still_reports_a_damaged_header(dense, capsys):
    vectors = generation(dense / "indexes" / "dense") / "codes.npy"
    damage_header(vectors)
    assert main(["index", "describe", str(dense), "--no-verify"]) == 2
    assert f"{vectors}: damaged .npy header" in one_error_line(capsys)
    assert main(["index", "search", str(dense), "-q", "x", "--mmap", "--no-verify", "--quiet"]) == 2
    assert f"{vectors}: damaged .npy header" in one_error_line(capsys)


@pytest.mark.parametrize("action", ["search", "describe"])
def test_no_verify_is_documented_on_every_loading_command(action, capsys):
    with pytest.raises(SystemExit):
        main(["index", action, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-verify skip the SHA-256 checksum check" in text


def test_verify_a_retriever_folder(dense, lexical, capsys):
    assert main(["index", "verify", str(lexical)]) == 0
    lines = capsys.readouterr().out.splitlines()
    checked = [Path(line.removeprefix("ok  ")) for line in lines[:-1]]
    assert all(line.startswith("ok  ") for line in lines[:-1])
    expected = {lexical / "retriever.json", lexical / "bm25.json", lexical / "documents.jsonl",
                *generation(lexical / "indexes" / "bm25").iterdir()}
    assert set(checked) == expected and len(checked) == len(expected)
    assert lines[-1].startswith(f"verified {len(expected)} files (") and lines[-1].endswith(f"{lexical} is intact")
    assert main(["index", "verify", str(dense)]) == 0  # the dense index is checked without loading the model
    assert any(line.endswith("codes.npy") for line in capsys.readouterr().out.splitlines())


def test_verify_a_single_index_folder(tmp_path, capsys):
    index = FlatIndex(4)
    index.add(["a", "b"], np.eye(2, 4, dtype=np.float32))
    index.save(tmp_path / "idx")
    assert main(["index", "verify", str(tmp_path / "idx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.rsplit("/", 1)[-1] for line in lines[:-1]] == ["manifest.json", "id_bytes.npy", "id_offsets.npy",
                                                             "id_hashes.npy", "id_hash_rows.npy", "codes.npy"]
    assert lines[-1].startswith("verified 6 files")


def _bm25_array(folder: Path) -> Path:
    return max(generation(folder / "indexes" / "bm25").glob("*.npy"), key=lambda p: p.stat().st_size)


DAMAGE = {
    "array bytes": (lambda f: flip_last_byte(_bm25_array(f)), lambda f: f"{_bm25_array(f)}: checksum mismatch"),
    "array header": (lambda f: damage_header(_bm25_array(f)), lambda f: f"{_bm25_array(f)}: checksum mismatch"),
    "array missing": (lambda f: _bm25_array(f).unlink(), lambda f: "npy: missing"),
    "CURRENT": (lambda f: (f / "indexes" / "bm25" / "CURRENT").write_text("rubbish\n"),
                lambda f: f"{f / 'indexes' / 'bm25' / 'CURRENT'}: garbled"),
    "index folder": (lambda f: shutil.rmtree(f / "indexes" / "bm25"), lambda f: "index folder not found"),
    "settings": (lambda f: (f / "retriever.json").write_text("{oops"),
                 lambda f: f"{f / 'retriever.json'}: missing or unreadable"),
    "settings fields": (lambda f: (f / "retriever.json").write_text(json.dumps(
        {"format": "flagstone-retriever", "version": 1, "signals": "bm25"})),
        lambda f: f"{f / 'retriever.json'}: malformed"),
    "bm25 model": (lambda f: (f / "bm25.json").write_text("[]"), lambda f: f"{f / 'bm25.json'}: not a Flagstone BM25"),
    "documents": (lambda f: (f / "documents.jsonl").write_text('{"_id": "d1", "text": "x"}\n{oops\n'),
                  lambda f: f"{f / 'documents.jsonl'}:2: malformed JSON"),
    "document fields": (lambda f: (f / "documents.jsonl").write_text('{"id": "d1"}\n'),
                        lambda f: f"{f / 'documents.jsonl'}:1: a saved document needs"),
    "document count": (lambda f: (f / "documents.jsonl").write_text('{"_id": "d1", "text": "x"}\n'),
                       lambda f: "the bm25 index holds 3 documents, the document list 1"),
    "no folder": (lambda f: shutil.rmtree(f), lambda f: f"folder not found: {f}"),
    "not a retriever": (lambda f: (f / "retriever.json").unlink(), lambda f: f"{f} is not a retriever folder"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_verify_names_the_bad_file_in_one_line(lexical, damage, capsys):
    change, message = DAMAGE[damage]
    expected = message(lexical)  # before the change, while the file is still there to name
    change(lexical)
    try:
        code = main(["index", "verify", str(lexical)])
    except SystemExit as exc:  # a missing folder is refused by the argument parser
        code = exc.code
    assert code == 2
    assert expected in one_error_line(capsys)
    assert capsys.readouterr().out == ""  # no "ok" lines when something is wrong


def test_a_damaged_header_is_no_traceback_in_a_real_process(tmp_path):
    index = FlatIndex(4)
    index.add(["a", "b"], np.eye(2, 4, dtype=np.float32))
    index.save(tmp_path / "idx")
    damage_header(generation(tmp_path / "idx") / "codes.npy")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "flagstone", "index", "verify", str(tmp_path / "idx")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    codes = generation(tmp_path / "idx") / "codes.npy"
    assert result.stderr.strip() == f"flagstone: error: {codes}: checksum mismatch, the index is corrupt"
