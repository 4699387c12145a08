"""The compact id map: the same behaviour as a plain dict, on both sides of a fold and of a hash collision,
and index folders in the old (one unicode array) and the new (bytes + offsets) layout."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import CorruptIndexError, IdError
from flagstone.index import idmap as idmap_module
from flagstone.index import storage
from flagstone.index.dense import DenseIndex
from flagstone.index.flat import FlatIndex
from flagstone.index.idmap import IdMap, id_hashes, pack_ids
from flagstone.models.embeddings import Embeddings
from tests.index.test_dense import build, data, search  # noqa: F401


class Model:
    """What the id map must behave like: a list of ids by row (None once removed) and a dict."""

    def __init__(self) -> None:
        self.rows: list[str | None] = []
        self.where: dict[str, int] = {}

    def extend(self, ids):
        for i in ids:
            self.where[i] = len(self.rows)
            self.rows.append(i)

    def remove(self, ids):
        for i in ids:
            self.rows[self.where.pop(i)] = None

    def reorder(self, rows):
        self.rows = [self.rows[r] for r in rows]
        self.where = {i: n for n, i in enumerate(self.rows) if i is not None}


def check_same(id_map: IdMap, model: Model, asked: list[str]) -> None:
    assert len(id_map) == len(model.where) and id_map.rows == len(model.rows)
    assert id_map.ids == model.rows
    assert np.array_equal(id_map.live_mask(), [i is not None for i in model.rows])
    live = list(model.where)
    assert id_map.positions(live).tolist() == [model.where[i] for i in live]
    assert all((i in id_map) == (i in model.where) for i in asked)
    assert id_map.known_rows(asked + asked[:5]).tolist() == sorted({model.where[i] for i in asked if i in model.where})
    gone = [i for i in asked if i not in model.where]
    if gone:
        with pytest.raises(IdError, match="unknown ids"):
            id_map.positions(live[:3] + gone[:1])


def random_ops(seed: int, steps: int = 60) -> None:
    rng = np.random.default_rng(seed)
    id_map, model = IdMap(), Model()
    ever: list[str] = []
    fresh = iter(f"{w}{n}" for n in range(10**6) for w in ("d", "é-", "x\udc80")[: 1 + n % 3])
    for step in range(steps):
        op = rng.choice(["add", "add_big", "remove", "readd", "reorder", "compact"], p=[.3, .08, .25, .12, .1, .15])
        if op in ("add", "add_big"):
            new = [next(fresh) for _ in range(int(rng.integers(1, 40 if op == "add" else 1500)))]
            id_map.extend(new)
            model.extend(new)
            ever += new
        elif op == "remove" and model.where:
            live = list(model.where)
            gone = [live[i] for i in rng.choice(len(live), size=min(len(live), int(rng.integers(1, 60))),
                                                replace=False)]
            rows = id_map.remove(gone)
            assert rows.tolist() == [model.where[i] for i in gone]
            model.remove(gone)
        elif op == "readd":  # ids removed before may come back, under a new row
            back = [i for i in ever if i not in model.where][: int(rng.integers(1, 20))]
            id_map.extend(back)
            model.extend(back)
        elif op == "reorder" and model.rows:  # a permutation that keeps removed rows too (sort by cluster)
            rows = rng.permutation(len(model.rows))
            id_map.reorder(rows)
            model.reorder(rows)
        elif op == "compact":
            rows = np.flatnonzero([i is not None for i in model.rows])
            id_map.reorder(rows)
            model.reorder(rows)
        asked = ever[-200:] + [ever[int(i)] for i in rng.integers(0, len(ever), 50)] if ever else []
        check_same(id_map, model, asked + ["never-added"])
        for row in rng.integers(0, max(len(model.rows), 1), 5) if model.rows else []:
            assert id_map.id_at(row) == model.rows[row]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_adds_removes_and_reorders_match_a_dict(seed):
    random_ops(seed)


def test_hash_collisions_are_told_apart_by_the_bytes(monkeypatch):
    """With a hash of 3 values nearly every lookup meets rows of other ids first: the results stay exact
    (every lookup scans a third of the rows, so fewer operations than the other random runs)."""
    monkeypatch.setattr(idmap_module, "id_hashes", lambda *a: id_hashes(*a) % np.uint64(3))
    random_ops(4, steps=25)
    id_map = IdMap.from_ids([f"d{i}" for i in range(500)])
    with pytest.raises(IdError, match=r"already in the index: \['d7'\]"):
        id_map.extend(["new", "d7"])
    data, offsets = pack_ids(["a", "b", "c", "b"])
    with pytest.raises(IdError, match=r"duplicate ids: \['b'\]"):
        IdMap.from_arrays({"id_bytes": data, "id_offsets": offsets})


def test_hash_is_fnv1a_of_the_utf8_bytes():
    ids = ["a", "doc12", "", "é", "x" * 70, "日本語"]
    data, offsets = pack_ids([i for i in ids if i])

    def fnv(raw: bytes) -> int:
        h = 0xCBF29CE484222325
        for b in raw:
            h = ((h ^ b) * 0x100000001B3) % 2**64
        return h

    assert id_hashes(data, offsets).tolist() == [fnv(i.encode()) for i in ids if i]
    assert id_hashes(data, offsets, np.array([4, 0])).tolist() == [fnv(ids[5].encode()), fnv(b"a")]


def test_refused_ids_change_nothing():
    id_map = IdMap.from_ids(["a", "b"])
    for bad, message in ((["c", ""], "non-empty"), (["c", "d", "c"], "duplicate ids in one add"),
                         (["c", "b"], "already in the index")):
        with pytest.raises(IdError, match=message):
            id_map.extend(bad)
        assert id_map.ids == ["a", "b"] and "c" not in id_map
    with pytest.raises(IdError, match="unknown ids"):
        id_map.remove(["a", "zz"])
    with pytest.raises(IdError, match="repeated in one remove"):
        id_map.remove(["a", "a"])
    assert id_map.ids == ["a", "b"] and len(id_map) == 2
    assert IdMap.from_ids([1, 2]).ids == ["1", "2"]  # ids are strings, as before


def test_truncate_drops_the_last_rows_on_both_sides_of_a_fold():
    id_map = IdMap.from_ids([f"d{i}" for i in range(3000)])  # folded: past the dict's threshold
    id_map.extend(["t1", "t2"])
    id_map.truncate(3001)
    assert id_map.ids[-2:] == ["d2999", "t1"] and "t2" not in id_map
    id_map.truncate(10)
    assert id_map.ids == [f"d{i}" for i in range(10)] and "d10" not in id_map and len(id_map) == 10
    id_map.extend(["d10"])
    assert id_map.positions(["d10"]).tolist() == [10]


def test_from_arrays_checks_its_input():
    data, offsets = pack_ids(["a", "bb"])
    assert IdMap.from_arrays({"id_bytes": data, "id_offsets": offsets}).ids == ["a", "bb"]
    with pytest.raises(ValueError, match="offsets"):
        IdMap.from_arrays({"id_bytes": data, "id_offsets": np.array([0, 1, 1, 3])})
    with pytest.raises(ValueError, match="uint8"):
        IdMap.from_arrays({"id_bytes": data.astype(np.int16), "id_offsets": offsets})


def test_a_failed_add_leaves_no_id_behind(data):  # noqa: F811
    ids, docs, _, _, _ = data
    index = FlatIndex(docs.shape[1])
    index.add(ids[:1500], docs[:1500])
    bad = docs[1500:3000].copy()
    bad[-1, 0] = np.nan
    with pytest.raises(Exception, match="NaN"):
        index.add(ids[1500:], bad)
    assert len(index) == 1500 and ids[1500] not in index and index.id_map.rows == 1500
    index.add(ids[1500:], docs[1500:])
    assert index.id_map.positions([ids[-1]]).tolist() == [len(ids) - 1]


def write_old_layout(new: str, old: str) -> None:
    """The folder an index saved before the compact layout would be: its ids as one unicode array (and,
    for HI², no saved posting lists)."""
    kind, params, arrays = storage.load_index(new)
    packed = IdMap.from_arrays(arrays)
    for name in ("id_bytes", "id_offsets", "id_hashes", "id_hash_rows"):
        del arrays[name]
    arrays.pop("posting_offsets", None)
    arrays.pop("posting_rows", None)
    storage.save_index(old, kind, params, {"ids": np.asarray(packed.ids, dtype=str), **arrays})


@pytest.mark.parametrize("kind,kw", [("flat", {}), ("hi2", {"codec": "pq", "pq_m": 4, "refine": 2, "n_probe": 4})])
def test_old_and_new_folders_load_and_search_alike(kind, kw, data, tmp_path):  # noqa: F811
    ids, docs, queries, doc_terms, q_terms = data
    index = build(kind, data, **kw)
    index.remove(ids[::7])
    expected = search(index, data, 10)
    expected_ids = index.ids_of(expected.positions)
    index.save(tmp_path / "new")
    files = {p.name for p in storage.index_files(tmp_path / "new")}
    assert {"id_bytes.npy", "id_offsets.npy", "id_hashes.npy", "id_hash_rows.npy"} <= files and "ids.npy" not in files
    write_old_layout(tmp_path / "new", tmp_path / "old")
    for folder in ("new", "old"):
        loaded = DenseIndex.load(tmp_path / folder)
        assert loaded.ids_of(search(loaded, data, 10).positions) == expected_ids, folder
        assert sorted(i for i in loaded.ids if i is not None) == sorted(set(ids) - set(ids[::7]))
        # still a working index: removals, adds of removed ids, and a save in the new layout
        loaded.remove(ids[1:3])
        found = loaded.ids_of(search(loaded, data, 10).positions)
        assert ids[1] not in loaded and all(len(row) == 10 and not set(row) & set(ids[1:3]) for row in found)
        back = Embeddings(dense=docs[:1], sparse=doc_terms.take([0])) if kind == "hi2" else docs[:1]
        loaded.add([ids[0]], back)
        assert ids[0] in loaded
        loaded.save(tmp_path / f"{folder}-again")
        again = DenseIndex.load(tmp_path / f"{folder}-again", mmap=True)
        assert again.ids_of(search(again, data, 10).positions) == loaded.ids_of(search(loaded, data, 10).positions)
    if kind == "hi2":
        loaded = DenseIndex.load(tmp_path / "new")
        # read back, not rebuilt; the per-document term lists stay on disk (only rebuilding reads them)
        rows, offsets = storage.load_index(tmp_path / "new")[2]["posting_rows"], \
            storage.load_index(tmp_path / "new")[2]["posting_offsets"]
        assert np.array_equal(loaded.postings[0], offsets) and np.array_equal(loaded.postings[1], rows)
        assert memory_mapped(loaded.term_rows) and memory_mapped(loaded.term_weights)
        assert memory_mapped(loaded.assign_similarity) and not memory_mapped(loaded.assign)
        assert loaded.memory()["parts"]["term_rows"]["where"] == "disk"


def memory_mapped(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array, np.ndarray) else None
    return False


def test_damaged_id_arrays_are_a_corrupt_index(tmp_path):
    index = FlatIndex(4)
    index.add(["a", "b"], np.eye(2, 4, dtype=np.float32))
    index.save(tmp_path / "idx")
    kind, params, arrays = storage.load_index(tmp_path / "idx")
    data, offsets = pack_ids(["a", "a"])
    table = {"id_hashes": id_hashes(data, offsets), "id_hash_rows": np.arange(2, dtype=np.int32)}
    for name, saved in (("rebuilt", {}), ("read", table)):  # the lookup table rebuilt on load, or read
        ids = {**arrays, "id_bytes": data, "id_offsets": offsets, **saved}
        if not saved:
            del ids["id_hashes"], ids["id_hash_rows"]
        storage.save_index(tmp_path / name, kind, params, ids)
        with pytest.raises(CorruptIndexError, match=r"duplicate ids: \['a'\]"):
            FlatIndex.load(tmp_path / name)
    storage.save_index(tmp_path / "unsorted", kind, params, {**arrays, "id_hashes": arrays["id_hashes"][::-1].copy()})
    with pytest.raises(CorruptIndexError, match="lookup table"):
        FlatIndex.load(tmp_path / "unsorted")
