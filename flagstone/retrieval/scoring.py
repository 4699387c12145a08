"""Query x document scores in each mode: dense inner product, lexical matching, ColBERT late interaction."""
from __future__ import annotations

import numpy as np

from flagstone.models.embeddings import MultiVectors, SparseWeights


def dense_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Inner products, (queries, docs); cosine when both sides are normalised."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(docs, dtype=np.float32).T


def sparse_scores(queries: SparseWeights, docs: SparseWeights) -> np.ndarray:
    """Sum over shared tokens of query weight x document weight, (queries, docs)."""
    return np.asarray((queries.to_scipy() @ docs.to_scipy().T).todense(), dtype=np.float32)


def colbert_scores(queries: MultiVectors, docs: MultiVectors) -> np.ndarray:
    """Mean over query tokens of the best dot product with any document token, (queries, docs)."""
    out = np.zeros((len(queries), len(docs)), dtype=np.float32)
    starts = docs.offsets[:-1]
    nonempty = docs.lengths > 0
    for qi in range(len(queries)):
        q = queries[qi]
        if len(q) == 0 or not nonempty.any():
            continue
        token_scores = q @ docs.vectors.T  # (query tokens, all doc tokens)
        best = np.maximum.reduceat(token_scores, starts[nonempty], axis=1)
        out[qi, nonempty] = best.sum(axis=0) / len(q)
    return out


def colbert_pair_scores(queries: MultiVectors, docs: MultiVectors) -> np.ndarray:
    """Late-interaction score of aligned pairs (query i with document i), (n,)."""
    if len(queries) != len(docs):
        raise ValueError("queries and docs must have the same length for pair scoring")
    out = np.zeros(len(queries), dtype=np.float32)
    for i in range(len(queries)):
        q, d = queries[i], docs[i]
        if len(q) and len(d):
            out[i] = (q @ d.T).max(axis=1).sum() / len(q)
    return out
