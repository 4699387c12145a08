"""Distributed encoding never writes into a folder Flagstone did not write, overwrite or not (no cluster needed:
the folder is checked before any work)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from flagstone._io import OUTPUT_MARKER  # noqa: E402
from flagstone.distributed.encode import MANIFEST, EmbedderSpec, _settings, encode_corpus  # noqa: E402
from flagstone.errors import DataError  # noqa: E402

IDS, TEXTS = ["a", "b", "c"], ["first text", "second text", "third text"]
SPEC = EmbedderSpec("all-MiniLM-L6-v2")  # never built: every call below stops before encoding


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_refused_even_with_overwrite(tmp_path, overwrite):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty" if not overwrite else "not written by Flagstone"):
        encode_corpus(IDS, TEXTS, tmp_path / "out", SPEC, shard_size=2, overwrite=overwrite, show_progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_copied_matching_manifest_without_the_marker_is_not_resumed_into(tmp_path, overwrite):
    """Same corpus, model and layout (what resuming looks for), but the folder is not one Flagstone wrote."""
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps(_settings(SPEC, ("dense",), IDS, 2)))
    (out / "shard-00001.npz").write_bytes(b"the user's own file")
    with pytest.raises(DataError, match="not written by Flagstone"):
        encode_corpus(IDS, TEXTS, out, SPEC, shard_size=2, overwrite=overwrite, show_progress=False)
    assert (out / "shard-00001.npz").read_bytes() == b"the user's own file"


def test_resuming_refuses_files_added_to_a_flagstone_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps(_settings(SPEC, ("dense",), IDS, 2)))
    (out / OUTPUT_MARKER).write_text(json.dumps({"format": "flagstone-output", "version": 1,
                                                 "entries": [MANIFEST, "shard-00000.npz", "shard-00001.npz"]}))
    (out / "added.csv").write_text("x")
    with pytest.raises(DataError, match="added.csv"):
        encode_corpus(IDS, TEXTS, out, SPEC, shard_size=2, overwrite=True, show_progress=False)
    assert (out / "added.csv").read_text() == "x"
