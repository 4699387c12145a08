from __future__ import annotations

import json

import numpy as np
import pytest

from flagstone.errors import IdError, VectorError
from flagstone.index import storage
from flagstone.index.dense import DenseIndex
from flagstone.index.flat import FlatIndex
from flagstone.index.hi2 import HI2Index
from flagstone.index.ivf import IVFIndex
from flagstone.index.storage import IndexFormatError
from flagstone.models.embeddings import Embeddings, SparseWeights

pytest.importorskip("faiss")

DIM, N_DOCS, N_QUERIES, VOCAB = 32, 3000, 60, 500


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors, and term weights where each cluster favours its own terms."""
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(40, DIM))
    labels = rng.integers(0, 40, N_DOCS)
    docs = centers[labels] + 0.6 * rng.normal(size=(N_DOCS, DIM))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q_labels = rng.integers(0, 40, N_QUERIES)
    queries = centers[q_labels] + 0.6 * rng.normal(size=(N_QUERIES, DIM))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def terms(label_list, n_terms):
        rows = []
        for lab in label_list:
            own = rng.choice(np.arange(lab * 10, lab * 10 + 10), size=3, replace=False)
            noise = rng.integers(400, VOCAB, size=n_terms)
            rows.append({int(t): float(rng.uniform(1, 3)) for t in own} | {int(t): float(rng.uniform(0, 1))
                                                                            for t in noise})
        return SparseWeights.from_dicts(rows, VOCAB)

    ids = [f"doc{i}" for i in range(N_DOCS)]
    return ids, docs.astype(np.float32), queries.astype(np.float32), terms(labels, 8), terms(q_labels, 2)


def exact(docs, queries, k, rows=None):
    rows = np.arange(len(docs)) if rows is None else np.asarray(rows)
    scores = queries @ docs[rows].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows[order], np.take_along_axis(scores, order, axis=1)


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def found_ids(index, result):
    return index.ids_of(result.positions)


def truth_ids(rows):
    return [[f"doc{r}" for r in row] for row in rows]


def build(kind, data, **kw):
    ids, docs, _, doc_terms, _ = data
    index = {"flat": FlatIndex, "ivf": IVFIndex, "hi2": HI2Index}[kind](DIM, **kw)
    if kind == "hi2":
        index.add(ids, Embeddings(dense=docs, sparse=doc_terms))
    else:
        index.add(ids, docs)
    return index


def search(index, data, k, **kw):
    _, _, queries, _, q_terms = data
    if isinstance(index, HI2Index):
        return index.search(Embeddings(dense=queries, sparse=q_terms), k, **kw)
    return index.search(queries, k, **kw)


def test_flat_equals_brute_force(data):
    index = build("flat", data)
    result = search(index, data, 10)
    truth, scores = exact(data[1], data[2], 10)
    assert np.array_equal(result.positions, truth)
    assert np.allclose(result.scores, scores, atol=1e-5)
    assert index.ids_of(result.positions)[0][0] == f"doc{truth[0, 0]}"
    assert (result.docs_evaluated == N_DOCS).all()


def test_ivf_clusters_do_not_depend_on_how_many_vectors_are_added_at_once():
    # nearly parallel vectors (what a tiny random model gives): almost every one is as near to two centroids,
    # so a rounding difference picks the other cluster. A shard adds its block, one index the whole corpus:
    # each vector must land in the same cluster, with the same similarity bit for bit, however it was added
    import copy

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal(DIM) + 1e-3 * rng.standard_normal((700, DIM))  # most top-2 gaps < 1e-7
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"v{i}" for i in range(len(vectors))]
    trained = IVFIndex(DIM, n_lists=8, n_probe=2)
    trained.train(vectors[:400])

    def clusters(index):
        ids_of_rows = index.id_map.ids_at(np.arange(len(index.assign)))
        return {i: (int(a), float(s)) for i, a, s in zip(ids_of_rows, index.assign, index.assign_similarity)}

    whole = copy.deepcopy(trained)
    whole.add(ids, vectors)
    assert len({a for a, _ in clusters(whole).values()}) > 1
    for cuts in ((0, 233, 467, 700), (0, 1, 8, 70, 300, 700)):
        pieces = {}
        for a, b in zip(cuts[:-1], cuts[1:]):
            shard = copy.deepcopy(trained)
            shard.add(ids[a:b], vectors[a:b])
            pieces |= clusters(shard)
        assert pieces == clusters(whole), cuts


@pytest.mark.parametrize("kind", ["ivf", "hi2"])
def test_probing_everything_is_exact(kind, data):
    index = build(kind, data)
    index.n_probe = index.n_lists
    result = search(index, data, 10)
    assert found_ids(index, result) == truth_ids(exact(data[1], data[2], 10)[0])


@pytest.mark.parametrize("kind", ["ivf", "hi2"])
def test_defaults_reach_high_recall_on_a_fraction(kind, data):
    index = build(kind, data)
    result = search(index, data, 10)
    assert recall(found_ids(index, result), truth_ids(exact(data[1], data[2], 10)[0])) >= 0.9
    assert result.docs_evaluated.mean() < 0.5 * N_DOCS
    described = index.describe()
    assert described["kind"] == kind and described["documents"] == N_DOCS and described["n_lists"] >= 2
    assert described["bytes_per_document"] >= 4 * DIM


def test_hi2_terms_add_what_clusters_miss(data):
    clusters_only = build("hi2", data, n_probe=1, terms_per_query=0)
    with_terms = build("hi2", data, n_probe=1)
    truth = truth_ids(exact(data[1], data[2], 10)[0])
    r_clusters = recall(found_ids(clusters_only, search(clusters_only, data, 10)), truth)
    r_both = recall(found_ids(with_terms, search(with_terms, data, 10)), truth)
    assert r_both > r_clusters


def test_pq_codec_saves_memory_and_keeps_recall(data):
    index = build("hi2", data, codec="pq", pq_m=8)
    assert index.codec.bytes_per_vector == 8
    described = index.describe()
    assert described["memory"]["codes"]["bytes_per_document"] == 8
    flat = build("hi2", data)  # the same lists and postings: only codes and codebooks differ
    codebooks = (index.codec.centroids.nbytes + index.codec.rotation.nbytes) / N_DOCS
    assert described["bytes_per_document"] == pytest.approx(flat.bytes_per_document() - 4 * DIM + 8 + codebooks)
    truth = truth_ids(exact(data[1], data[2], 10)[0])
    assert recall(found_ids(index, search(index, data, 10)), truth) >= 0.5
    fp16 = build("flat", data, codec="fp16")
    assert recall(found_ids(fp16, search(fp16, data, 10)), truth) >= 0.99


@pytest.mark.parametrize("kind", ["flat", "ivf", "hi2"])
def test_filters_keep_recall_when_narrow(kind, data):
    ids, docs, queries = data[0], data[1], data[2]
    index = build(kind, data, n_probe=1) if kind != "flat" else build(kind, data)
    allowed_rows = np.arange(0, N_DOCS, 97)  # 31 documents, mostly outside the probed clusters
    result = search(index, data, 5, allow=[ids[r] for r in allowed_rows])
    truth, _ = exact(docs, queries, 5, allowed_rows)
    assert found_ids(index, result) == truth_ids(truth)
    wide = {ids[r] for r in range(0, N_DOCS, 2)}
    result = search(index, data, 5, allow=sorted(wide))
    assert all(set(row) <= wide for row in found_ids(index, result))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hi2"])
def test_delete_then_compact(kind, data):
    index = build(kind, data)
    before = search(index, data, 10)
    gone = sorted({row[0] for row in found_ids(index, before)})
    index.remove(gone)
    assert len(index) == N_DOCS - len(gone) and gone[0] not in index
    after = index.ids_of(search(index, data, 10).positions)
    assert not set(gone) & {i for row in after for i in row}
    rows_before = index.codec.codes.shape[0]
    index.compact()
    assert index.codec.codes.shape[0] == rows_before - len(gone)  # space is really freed
    assert index.ids_of(search(index, data, 10).positions) == after  # same results, new rows
    with pytest.raises(IdError, match="unknown ids"):
        index.remove(gone[:1])


@pytest.mark.parametrize("kind,kw", [("flat", {}), ("ivf", {}), ("hi2", {}), ("hi2", {"codec": "pq", "pq_m": 8}),
                                     ("ivf", {"codec": "fp16"})])
def test_save_load_round_trip(kind, kw, data, tmp_path):
    index = build(kind, data, **kw)
    index.remove([data[0][3], data[0][5]])
    expected = search(index, data, 10)
    expected_ids = index.ids_of(expected.positions)
    index.save(tmp_path / "idx")
    for mmap in (False, True):
        loaded = DenseIndex.load(tmp_path / "idx", mmap=mmap)
        assert type(loaded) is type(index) and len(loaded) == N_DOCS - 2
        got = search(loaded, data, 10)
        assert loaded.ids_of(got.positions) == expected_ids
        assert np.allclose(got.scores, expected.scores, atol=1e-6)
        assert loaded.describe() == index.describe()
    # adding to a loaded index
    loaded = DenseIndex.load(tmp_path / "idx")
    extra = np.ones((1, DIM), dtype=np.float32) / np.sqrt(DIM)
    if kind == "hi2":
        loaded.add(["new"], Embeddings(dense=extra, sparse=SparseWeights.from_dicts([{1: 1.0}], VOCAB)))
    else:
        loaded.add(["new"], extra)
    assert "new" in loaded and len(loaded) == N_DOCS - 1


def test_interrupted_save_leaves_the_old_index(data, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    first = build("ivf", data)
    first.save(folder)
    second = build("flat", data)
    second.remove([data[0][0]])
    calls = {"n": 0}
    real_save = np.save

    def failing_save(handle, array, allow_pickle=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill in the middle of a write")
        return real_save(handle, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(storage.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        second.save(folder)
    monkeypatch.undo()
    survivor = DenseIndex.load(folder)
    assert isinstance(survivor, IVFIndex) and len(survivor) == N_DOCS
    second.save(folder)  # the next save still works and replaces it
    assert isinstance(DenseIndex.load(folder), FlatIndex)
    assert len(list(folder.glob("gen-*"))) == 1


def test_load_rejects_corrupt_and_foreign_folders(data, tmp_path):
    with pytest.raises(IndexFormatError, match="index folder not found"):
        DenseIndex.load(tmp_path / "nothing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hello")
    with pytest.raises(IndexFormatError, match="not a Flagstone index"):
        DenseIndex.load(tmp_path / "foreign")
    with pytest.raises(IndexFormatError, match="non-empty folder"):
        build("flat", data).save(tmp_path / "foreign")
    folder = tmp_path / "idx"
    build("flat", data).save(folder)
    gen = folder / (folder / "CURRENT").read_text().strip()
    codes = gen / "codes.npy"
    raw = bytearray(codes.read_bytes())
    raw[-1] ^= 0xFF
    codes.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="checksum mismatch"):
        DenseIndex.load(folder)
    codes.write_bytes(bytes(raw[:-10]))
    with pytest.raises(IndexFormatError, match="truncated"):
        DenseIndex.load(folder)
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["version"] = 99
    (gen / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="version 99"):
        DenseIndex.load(folder)
    build("flat", data).save(tmp_path / "flat")
    with pytest.raises(IndexFormatError, match="not 'ivf'"):
        IVFIndex.load(tmp_path / "flat")


def test_bad_input(data):
    docs = data[1]
    index = FlatIndex(DIM)
    empty = index.search(docs[:2], 3)
    assert (empty.positions == -1).all() and np.isneginf(empty.scores).all()
    with pytest.raises(VectorError, match=r"shape \(n, 32\)"):
        index.add(["a"], np.ones((1, 16)))
    bad = docs[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(VectorError, match="row 1 contains NaN"):
        index.add(["a", "b"], bad)
    with pytest.raises(IdError, match="duplicate ids"):
        index.add(["a", "a"], docs[:2])
    index.add(["a", "b"], docs[:2])
    with pytest.raises(IdError, match="already in the index"):
        index.add(["a"], docs[:1])
    # ids the index does not hold cannot match: an allow-list of only such ids finds nothing
    nothing = index.search(docs[:1], 1, allow=["zzz"])
    assert nothing.positions.tolist() == [[-1]]
    with pytest.raises(VectorError):
        index.search(np.ones((1, 8)), 1)
    result = index.search(docs[:1], 5)  # k larger than the index
    assert result.positions.shape == (1, 5) and list(result.positions[0, 2:]) == [-1, -1, -1]
    with pytest.raises(TypeError, match="term weights"):
        HI2Index(DIM).add(["x"], docs[:1])


KILL_CHILD = """
import sys, time
import numpy as np
from flagstone.index import storage
from flagstone.index.flat import FlatIndex

folder = sys.argv[1]
rng = np.random.default_rng(0)
first = FlatIndex(8)
first.add([f"a{i}" for i in range(50)], rng.normal(size=(50, 8)))
first.save(folder)
real_save = np.save
calls = [0]

def slow_save(handle, array, allow_pickle=False):
    calls[0] += 1
    real_save(handle, array, allow_pickle=allow_pickle)
    if calls[0] == 2:
        print("WRITING", flush=True)
        time.sleep(120)

storage.np.save = slow_save
second = FlatIndex(8)
second.add([f"b{i}" for i in range(70)], rng.normal(size=(70, 8)))
second.save(folder)
"""


def test_kill_during_save_leaves_the_old_index_loadable(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO

    folder = tmp_path / "idx"
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(folder)], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert child.stdout.readline().strip() == "WRITING"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    survivor = DenseIndex.load(folder)
    assert len(survivor) == 50 and "a0" in survivor  # the old index, whole
    survivor.add(["c"], np.ones((1, 8), dtype=np.float32))
    survivor.save(folder)  # a half-written generation does not block the next save
    assert len(DenseIndex.load(folder)) == 51 and len(list(folder.glob("gen-*"))) == 1
