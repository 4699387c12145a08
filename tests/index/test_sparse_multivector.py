from __future__ import annotations

import numpy as np
import pytest

import flagstone.index as index_module
from flagstone.errors import IdError
from flagstone.index.multivector import MultiVectorIndex
from flagstone.index.sparse import SparseIndex
from flagstone.models.embeddings import MultiVectors, SparseWeights
from flagstone.models.scoring import colbert_scores, sparse_scores


@pytest.fixture
def sparse_data():
    rng = np.random.default_rng(3)
    rows = [{int(t): float(rng.uniform(0.1, 2)) for t in rng.choice(50, size=6, replace=False)} for _ in range(40)]
    queries = [{int(t): 1.0 for t in rng.choice(50, size=3, replace=False)} for _ in range(5)]
    return SparseWeights.from_dicts(rows, 50), SparseWeights.from_dicts(queries, 50)


@pytest.fixture
def colbert_data():
    rng = np.random.default_rng(4)
    docs = MultiVectors.from_list([rng.normal(size=(rng.integers(1, 6), 8)).astype(np.float32) for _ in range(30)], 8)
    queries = MultiVectors.from_list([rng.normal(size=(3, 8)).astype(np.float32) for _ in range(4)], 8)
    return docs, queries


def _ids(n):
    return [f"x{i}" for i in range(n)]


def test_sparse_remove_compact_save_load(sparse_data, tmp_path):
    docs, queries = sparse_data
    index = SparseIndex(50)
    index.add(_ids(len(docs)), docs)
    full = sparse_scores(queries, docs)
    first = index.search(queries, 3)
    assert np.allclose(first.scores, -np.sort(-full, axis=1)[:, :3], atol=1e-6)
    gone = sorted({row[0] for row in index.ids_of(first.positions)})
    index.remove(gone)
    after = index.ids_of(index.search(queries, 3).positions)
    assert not set(gone) & {i for row in after for i in row}
    index.save(tmp_path / "sparse")
    loaded = index_module.load(tmp_path / "sparse")
    assert isinstance(loaded, SparseIndex) and len(loaded) == len(docs) - len(gone)
    assert loaded.ids_of(loaded.search(queries, 3).positions) == after
    assert loaded.describe()["postings"] > 0
    with pytest.raises(IdError):
        loaded.remove(gone[:1])


def test_multivector_remove_save_load_and_candidates(colbert_data, tmp_path):
    docs, queries = colbert_data
    index = MultiVectorIndex(8)
    index.add(_ids(len(docs)), docs)
    full = colbert_scores(queries, docs)
    result = index.search(queries, 5)
    assert np.allclose(result.scores, -np.sort(-full, axis=1)[:, :5], atol=1e-5)
    reranked = index.search_candidates(queries, [["x1", "x2", "x3"]] * len(queries), k=2)
    for qi, ranked in enumerate(reranked):
        expected = sorted(((f"x{j}", full[qi, j]) for j in (1, 2, 3)), key=lambda t: -t[1])[:2]
        assert [r[0] for r in ranked] == [e[0] for e in expected]
    index.remove(["x0", "x7"])
    index.save(tmp_path / "mv")
    for mmap in (False, True):
        loaded = index_module.load(tmp_path / "mv", mmap=mmap)
        assert isinstance(loaded, MultiVectorIndex) and len(loaded) == len(docs) - 2
        got = loaded.ids_of(loaded.search(queries, 5).positions)
        assert got == index.ids_of(index.search(queries, 5).positions)
    assert loaded.describe()["tokens"] == int(docs.lengths.sum() - docs.lengths[0] - docs.lengths[7])
