"""Query x document scores in each mode (dense inner product, lexical matching, ColBERT late interaction)
and the per-query score normalisation that fusion and reranking share."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from flagstone.models.embeddings import Embeddings, MultiVectors, SparseWeights
from flagstone.models.finite import require_finite

NORMALIZATIONS = ("none", "minmax", "zscore")


def normalize_scores(scores: np.ndarray, method: str) -> np.ndarray:
    """Rescale one query's candidate scores so signals with different ranges can be added.

    ``minmax`` maps the range to [0, 1]. A tie (one candidate, or all equal) has no range to scale: a positive
    score counts as found at the top (1), zero or less as not found (0, e.g. bm25's 0 for no matching term), so
    a lone candidate keeps its signal's weight instead of scoring 0.
    """
    scores = require_finite(np.asarray(scores, dtype=np.float64), "scores to normalise")
    if method == "none" or len(scores) == 0:
        return scores
    if method == "minmax":
        lo, hi = scores.min(), scores.max()
        if hi > lo:
            return (scores - lo) / (hi - lo)
        return np.full_like(scores, 1.0 if hi > 0 else 0.0)
    if method == "zscore":
        sd = scores.std()
        return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {method!r}")


SCORE_BLOCK = 1024  # rows per matrix product in exact scoring


def blocked_inner_products(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(queries, rows) inner products as float32, SCORE_BLOCK rows at a time, accumulated in float64.

    Why float64: BLAS's float32 kernels round a product differently with the matrix shape and, on some CPUs
    (OpenBLAS's Haswell kernels), with a row's place inside the block, so a document would score a few ulps
    apart in a shard and in one index over the whole corpus. Products summed in float64 and rounded once to
    float32 are the same bit for bit wherever a row sits (unless the exact value lies within ~1e-16 of a float32
    rounding boundary), so shards, filtered scans and rescoring agree with one index. Cost: 1.4-1.8x the
    float32 kernel for 1 to 256 queries over 50k x 384 rows on one AVX2 core (benchmarks/exact_scoring.py)."""
    queries = np.asarray(queries, dtype=np.float32).astype(np.float64)
    out = np.empty((len(queries), len(rows)), dtype=np.float32)
    for start in range(0, len(rows), SCORE_BLOCK):
        block = np.asarray(rows[start : start + SCORE_BLOCK], dtype=np.float64)
        out[:, start : start + len(block)] = queries @ block.T
    return out


def dense_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Inner products, (queries, docs); cosine when both sides are normalised."""
    return np.asarray(queries, dtype=np.float32) @ np.asarray(docs, dtype=np.float32).T


def sparse_scores(queries: SparseWeights, docs: SparseWeights) -> np.ndarray:
    """Sum over shared tokens of query weight x document weight, (queries, docs)."""
    return np.asarray((queries.to_scipy() @ docs.to_scipy().T).todense(), dtype=np.float32)


_COLBERT_BLOCK_TOKENS = 262_144  # document tokens scored at once: bounds the (query tokens x block) matrix


def colbert_scores(queries: MultiVectors, docs: MultiVectors) -> np.ndarray:
    """Mean over query tokens of the best dot product with any document token, (queries, docs)."""
    out = np.zeros((len(queries), len(docs)), dtype=np.float32)
    lengths = docs.lengths
    # split the documents into blocks of about _COLBERT_BLOCK_TOKENS tokens (whole documents only)
    cuts = np.searchsorted(docs.offsets, np.arange(0, docs.offsets[-1], _COLBERT_BLOCK_TOKENS), side="right") - 1
    bounds = np.unique(np.concatenate([cuts, [len(docs)]]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        nonempty = np.flatnonzero(lengths[lo:hi] > 0) + lo
        if len(nonempty) == 0:
            continue
        base = docs.offsets[lo]
        block = docs.vectors[base : docs.offsets[hi]]
        starts = docs.offsets[nonempty] - base
        for qi in range(len(queries)):
            q = queries[qi]
            if len(q) == 0:
                continue
            # (query tokens, block tokens), summed in float64: a document's score is then the same bit for bit
            # whichever other documents are scored with it (a filtered search, a shard, a rescore)
            token_scores = blocked_inner_products(q, block)
            best = np.maximum.reduceat(token_scores, starts, axis=1)  # (query tokens, documents)
            # summed along contiguous rows, one per document: numpy sums a (tokens, 1) column pairwise but adds
            # the rows of a wider array one after another, which rounds differently
            out[qi, nonempty] = np.ascontiguousarray(best.T).sum(axis=1) / len(q)
    return out


def colbert_pair_scores(queries: MultiVectors, docs: MultiVectors) -> np.ndarray:
    """Late-interaction score of aligned pairs (query i with document i), (n,)."""
    if len(queries) != len(docs):
        raise ValueError("queries and docs must have the same length for pair scoring")
    out = np.zeros(len(queries), dtype=np.float32)
    for i in range(len(queries)):
        q, d = queries[i], docs[i]
        if len(q) and len(d):
            out[i] = blocked_inner_products(q, d).max(axis=1).sum() / len(q)
    return out


def sparse_pair_scores(queries: SparseWeights, docs: SparseWeights) -> np.ndarray:
    """Lexical matching score of aligned pairs (query i with document i), (n,)."""
    if len(queries) != len(docs):
        raise ValueError("queries and docs must have the same length for pair scoring")
    return np.asarray(queries.to_scipy().multiply(docs.to_scipy()).sum(axis=1), dtype=np.float32).ravel()


@dataclass(frozen=True)
class PairScores:
    """Each mode's score for aligned (query, document) pairs; a mode not encoded on both sides is None."""

    dense: np.ndarray | None = None
    sparse: np.ndarray | None = None
    colbert: np.ndarray | None = None

    def combined(self, weights: Mapping[str, float]) -> np.ndarray:
        """Weighted average of the modes, sum(w * score) / sum(w), as BGE-M3 combines them."""
        total = sum(weights.values())
        if not weights or total == 0:
            raise ValueError("weights must name at least one mode with a non-zero weight")
        parts = []
        for name, w in weights.items():
            scores = getattr(self, name, None) if name in ("dense", "sparse", "colbert") else None
            if scores is None:
                raise ValueError(f"no {name!r} scores: encode both sides with {name}=True")
            parts.append(w * scores)
        return (np.sum(parts, axis=0) / total).astype(np.float32)


def score_pairs(queries: Embeddings, docs: Embeddings) -> PairScores:
    """Score query i against document i in every mode both sides were encoded with."""
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries for {len(docs)} documents")
    dense = None
    if queries.dense is not None and docs.dense is not None:
        dense = np.einsum("ij,ij->i", queries.dense, docs.dense).astype(np.float32)
    sparse = None
    if queries.sparse is not None and docs.sparse is not None:
        sparse = sparse_pair_scores(queries.sparse, docs.sparse)
    colbert = None
    if queries.colbert is not None and docs.colbert is not None:
        colbert = colbert_pair_scores(queries.colbert, docs.colbert)
    return PairScores(dense, sparse, colbert)
