from __future__ import annotations

import numpy as np
import pytest

from flagstone.genir.docids import Docids, atomic_docids, semantic_docids
from flagstone.genir.trie import DocidTrie


def blobs(n_per_blob: int, n_blobs: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors in ``n_blobs`` tight, well-separated groups (blob ``b`` holds rows b*n .. (b+1)*n - 1)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:n_blobs] * 10
    x = np.concatenate([c + rng.normal(scale=0.3, size=(n_per_blob, dim)) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_semantic_ids_are_unique_prefix_free_and_follow_the_clusters():
    vectors = blobs(40, 3)
    ids = [f"d{i}" for i in range(len(vectors))]
    docids = semantic_docids(ids, vectors, branching=3, leaf_size=10)
    assert len(set(docids.codes)) == len(ids)
    DocidTrie([docids.token_sequence(i) for i in range(len(ids))])  # raises on a prefix clash
    # hierarchical: documents that share a top-level digit are far more alike than documents that do not,
    # and no leaf holds more than leaf_size documents
    first = np.array([c[0] for c in docids.codes])
    same = first[:, None] == first[None, :]
    similarity = vectors @ vectors.T
    assert len(set(first.tolist())) == 3
    assert similarity[same].mean() > similarity[~same].mean() + 0.3
    assert docids.depth >= 3  # 120 documents, leaves of at most 10, 3 clusters per split
    leaves: dict[tuple[int, ...], int] = {}
    for code in docids.codes:
        leaves[code[:-1]] = leaves.get(code[:-1], 0) + 1
    assert max(leaves.values()) <= 10
    # positions are depth-specific tokens: the same digit at another depth is another token
    assert docids.token_sequence(0)[0] < docids.width <= docids.token_sequence(0)[1]


def test_identical_vectors_still_get_distinct_ids():
    vectors = np.ones((25, 4), dtype=np.float32) / 2
    docids = semantic_docids([str(i) for i in range(25)], vectors, branching=2, leaf_size=4)
    assert len(set(docids.codes)) == 25
    assert max(len(c) for c in docids.codes) <= 5


def test_atomic_ids_are_one_token_per_document():
    docids = atomic_docids(["a", "b", "c"])
    assert docids.tokens() == ["<d0>", "<d1>", "<d2>"]
    assert [docids.token_sequence(i) for i in range(3)] == [(0,), (1,), (2,)]


def test_the_trie_allows_only_docid_continuations():
    trie = DocidTrie([(0, 5), (0, 6), (1, 5, 7)])
    assert trie.allowed(()).tolist() == [0, 1]
    assert trie.allowed((0,)).tolist() == [5, 6]
    assert trie.allowed((1, 5)).tolist() == [7]
    assert trie.allowed((0, 5)).tolist() == [] and trie.document((0, 5)) == 0
    assert trie.document((1, 5)) is None and trie.document((2,)) is None
    assert trie.max_length == 3


@pytest.mark.parametrize("sequences,message", [
    ([(0, 1), (0, 1)], "share the docid"),
    ([(0,), (0, 1)], "is a prefix of another"),
    ([()], "empty docid"),
])
def test_the_trie_refuses_ambiguous_docids(sequences, message):
    with pytest.raises(ValueError, match=message):
        DocidTrie(sequences)


def test_docids_refuse_duplicate_documents():
    with pytest.raises(ValueError, match="unique"):
        Docids("atomic", ("a", "a"), ((0,), (1,)))
