from __future__ import annotations

import json

import pytest

from flagstone.errors import DataError, IdError
from flagstone.server.store import SNAPSHOT, WAL, Document, DocumentStore


def test_writes_survive_reopening_and_checkpoints(tmp_path):
    store = DocumentStore(tmp_path, checkpoint_every=3)
    store.upsert([Document("a", "alpha", {"n": 1})])
    store.upsert([Document("b", "beta")])
    assert not (tmp_path / SNAPSHOT).exists()
    store.upsert([Document("a", "alpha 2")])  # third logged write: checkpoint
    assert (tmp_path / SNAPSHOT).is_file() and (tmp_path / WAL).read_text() == ""
    store.delete(["b"])
    store.close()
    again = DocumentStore(tmp_path)
    assert {d.id: d.text for d in again.documents.values()} == {"a": "alpha 2"}
    assert again.documents["a"].metadata == {}


def test_a_torn_last_line_is_dropped_and_the_log_repaired(tmp_path):
    store = DocumentStore(tmp_path)
    store.upsert([Document("a", "alpha")])
    store.close()
    with open(tmp_path / WAL, "a") as f:
        f.write('{"op": "upsert", "documents": [{"id": "b", "te')  # a kill mid-write
    again = DocumentStore(tmp_path)
    assert again.dropped_tail and list(again.documents) == ["a"]
    again.upsert([Document("c", "gamma")])
    again.close()
    assert list(DocumentStore(tmp_path).documents) == ["a", "c"]


def test_a_torn_line_with_its_newline_is_dropped_too(tmp_path):
    (tmp_path / WAL).write_text(json.dumps({"op": "upsert", "documents": [{"id": "a", "text": "x"}]}) + "\n{\"op\n")
    assert list(DocumentStore(tmp_path).documents) == ["a"]


def test_damage_in_the_middle_of_the_log_is_an_error(tmp_path):
    good = json.dumps({"op": "delete", "ids": ["x"]})
    (tmp_path / WAL).write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(DataError, match=":2: damaged"):
        DocumentStore(tmp_path)


def test_add_without_overwrite_and_unknown_deletes(tmp_path):
    store = DocumentStore(tmp_path)
    store.upsert([Document("a", "alpha")])
    with pytest.raises(IdError, match="already"):
        store.upsert([Document("a", "again"), Document("b", "beta")], overwrite=False)
    assert list(store.documents) == ["a"]  # nothing of the refused call was written
    with pytest.raises(IdError, match="unknown"):
        store.delete(["zzz"])
    assert store.delete(["zzz", "a"], missing_ok=True) == 1
    store.close()
