"""One protocol, five kinds: every index answers add / remove / search(allow=) / save / load(mmap) / len /
describe the same way, filtered search happens inside the index, and an index grown by many small adds and
removes answers like one built at once from the same documents."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.index import load
from flagstone.index.flat import FlatIndex
from flagstone.index.hi2 import HI2Index
from flagstone.index.ivf import IVFIndex
from flagstone.index.multivector import MultiVectorIndex
from flagstone.index.sparse import SparseIndex
from flagstone.models.embeddings import Embeddings, MultiVectors, SparseWeights
from flagstone.models.scoring import colbert_scores

pytest.importorskip("faiss")

DIM, VOCAB, N_QUERIES, K = 24, 400, 40, 10
KINDS = ("flat", "ivf", "hi2", "sparse", "multivector")
SIZES = {"flat": 2000, "ivf": 2000, "hi2": 2000, "sparse": 2000, "multivector": 400}


def _terms(rng, labels, per_row):
    rows = []
    for lab in labels:
        own = rng.choice(np.arange(lab * 8, lab * 8 + 8), size=3, replace=False)
        noise = rng.integers(320, VOCAB, size=per_row)
        rows.append({int(t): float(rng.uniform(1, 3)) for t in own} | {int(t): float(rng.uniform(0, 1)) for t in noise})
    return SparseWeights.from_dicts(rows, VOCAB)


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    """(kind, ids, document Embeddings, query Embeddings, exact score matrix queries x documents)."""
    kind = request.param
    n = SIZES[kind]
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(40, DIM))
    labels, q_labels = rng.integers(0, 40, n), rng.integers(0, 40, N_QUERIES)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    docs = unit(centers[labels] + 0.6 * rng.normal(size=(n, DIM)))
    queries = unit(centers[q_labels] + 0.6 * rng.normal(size=(N_QUERIES, DIM)))
    ids = [f"d{i}" for i in range(n)]
    if kind == "sparse":
        d, q = _terms(rng, labels, 8), _terms(rng, q_labels, 2)
        return kind, ids, Embeddings(sparse=d), Embeddings(sparse=q), (q.to_scipy() @ d.to_scipy().T).toarray()
    if kind == "multivector":
        def tokens(lab_list):
            return MultiVectors.from_list([unit(centers[lab] + 0.8 * rng.normal(size=(int(rng.integers(3, 9)), DIM)))
                                           for lab in lab_list], DIM)
        d, q = tokens(labels), tokens(q_labels)
        return kind, ids, Embeddings(colbert=d), Embeddings(colbert=q), colbert_scores(q, d)
    d_terms, q_terms = (_terms(rng, labels, 8), _terms(rng, q_labels, 2)) if kind == "hi2" else (None, None)
    return (kind, ids, Embeddings(dense=docs, sparse=d_terms), Embeddings(dense=queries, sparse=q_terms),
            queries @ docs.T)


def make(kind: str):
    if kind == "flat":
        return FlatIndex(DIM)
    if kind == "ivf":
        return IVFIndex(DIM, n_lists=40, n_probe=4)
    if kind == "hi2":
        return HI2Index(DIM, n_lists=40, n_probe=4, terms_per_doc=4, terms_per_query=4)
    if kind == "sparse":
        return SparseIndex(VOCAB)
    return MultiVectorIndex(DIM)


def take(emb: Embeddings, rows) -> Embeddings:
    return emb.take(np.asarray(rows, dtype=np.int64))


def truth(exact: np.ndarray, rows: np.ndarray, ids: list[str], k: int = K) -> list[list[str]]:
    """Exact top-k ids among ``rows`` (documents), per query."""
    scores = exact[:, rows]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[rows[j]] for j in row] for row in order]


def recall(found: list[list[str]], expected: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, expected)]))


def test_add_search_remove_save_load(case, tmp_path):
    kind, ids, docs, queries, exact = case
    index = make(kind)
    index.add(ids, docs)
    assert len(index) == len(ids) and ids[0] in index
    result = index.search(queries, K)
    assert result.positions.shape == (N_QUERIES, K) and result.scores.dtype == np.float32
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()  # best first
    found = index.ids_of(result.positions)
    expected = truth(exact, np.arange(len(ids)), ids)
    floor = 1.0 if kind in ("flat", "sparse", "multivector") else 0.8
    assert recall(found, expected) >= floor
    described = index.describe()
    assert described["kind"] == kind and described["documents"] == len(ids) and described["bytes_per_document"] > 0

    gone = sorted({row[0] for row in found})
    index.remove(gone)
    assert len(index) == len(ids) - len(gone) and gone[0] not in index
    after = index.ids_of(index.search(queries, K).positions)
    assert not set(gone) & {i for row in after for i in row}

    index.save(tmp_path / "idx")
    for mmap in (False, True):
        loaded = load(tmp_path / "idx", mmap=mmap)
        assert type(loaded) is type(index) and len(loaded) == len(index)
        again = loaded.search(queries, K)
        assert loaded.ids_of(again.positions) == after
        assert loaded.describe() == index.describe()
    loaded = type(index).load(tmp_path / "idx", mmap=True)
    loaded.add(["extra"], take(docs, [0]))  # adding to a memory-mapped index copies it into memory first
    assert "extra" in loaded and len(loaded) == len(index) + 1


@pytest.mark.parametrize("fraction", [0.01, 0.10, 0.50])
def test_allow_lists_against_exact_filtered_search(case, fraction):
    kind, ids, docs, queries, exact = case
    index = make(kind)
    index.add(ids, docs)
    rng = np.random.default_rng(int(fraction * 1000))
    allowed = np.sort(rng.choice(len(ids), size=max(K, int(fraction * len(ids))), replace=False))
    allow = [ids[r] for r in allowed] + ["not-in-this-index"]  # unknown ids cannot match
    result = index.search(queries, K, allow=allow)
    found = index.ids_of(result.positions)
    assert all(len(row) == K for row in found)  # k hits whenever k allowed documents exist
    assert {i for row in found for i in row} <= set(allow)
    expected = truth(exact, allowed, ids)
    if kind in ("flat", "sparse", "multivector"):  # exactly the top-k of the allowed set (ties in any order)
        position = {doc_id: n for n, doc_id in enumerate(ids)}
        expected_scores = np.array([[exact[q, position[i]] for i in row] for q, row in enumerate(expected)])
        np.testing.assert_allclose(result.scores, expected_scores, rtol=1e-5, atol=1e-6)
        for q, (got, want) in enumerate(zip(found, expected)):
            kth = expected_scores[q, -1]
            assert {i for i in got if exact[q, position[i]] > kth + 1e-6} == \
                {i for i in want if exact[q, position[i]] > kth + 1e-6}
    else:
        unfiltered = recall(index.ids_of(index.search(queries, K).positions), truth(exact, np.arange(len(ids)), ids))
        assert recall(found, expected) >= unfiltered


def test_grown_index_equals_one_built_at_once(case):
    """Many small adds and removes give the same answers as a fresh index of the surviving documents (for
    IVF / HI² the fresh one is trained on the same sample, since trained structures are kept across adds)."""
    kind, ids, docs, queries, _ = case
    n = len(ids)
    first = n // 2
    grown = make(kind)
    grown.add(ids[:first], take(docs, range(first)))
    for lo in range(first, n, 37):
        hi = min(lo + 37, n)
        grown.add(ids[lo:hi], take(docs, range(lo, hi)))
    rng = np.random.default_rng(5)
    removed = set(rng.choice(n, size=n // 10, replace=False).tolist())
    grown.remove([ids[r] for r in sorted(removed)])
    grown.compact()
    live = [r for r in range(n) if r not in removed]

    fresh = make(kind)
    if kind in ("ivf", "hi2"):
        fresh.train(docs.dense[:first])
    fresh.add([ids[r] for r in live], take(docs, live))
    a, b = grown.search(queries, K), fresh.search(queries, K)
    assert grown.ids_of(a.positions) == fresh.ids_of(b.positions)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
