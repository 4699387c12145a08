"""Hard-negative mining with any Flagstone retriever, and teacher scores for distillation."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from flagstone.models.reranker import Reranker, checked_scores
from flagstone.retrieval.retriever import Retriever
from flagstone.training.data import TrainingExample

if TYPE_CHECKING:
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder


def mining_retriever(
    embedder: Embedder | None,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    mode: str = "dense",
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
) -> Retriever:
    """A retriever over the corpus to mine from, fitted with only what ``mode`` searches (every signal for
    "hybrid"). With a ``cache`` the embedder wears it, so mining the same corpus again (other training data,
    other settings) encodes nothing. ``embedder`` may be None for ``mode="bm25"``."""
    from flagstone.models.cache import CachedEmbedder

    if mode != "bm25" and embedder is None:
        raise ValueError(f"mode {mode!r} needs an embedder")
    if mode == "bm25":
        embedder = None
    elif cache is not None:
        embedder = CachedEmbedder(embedder, cache)
    signals = None if mode == "hybrid" else [mode]
    return Retriever(embedder, signals=signals).fit(ids, texts, show_progress=show_progress)


def mine_hard_negatives(
    examples: Sequence[TrainingExample],
    retriever: Retriever,
    doc_texts: dict[str, str],
    *,
    mode: str = "dense",
    rank_range: tuple[int, int] = (10, 100),
    n_negatives: int = 15,
    seed: int = 0,
) -> list[TrainingExample]:
    """Replace each example's negatives with ``n_negatives`` documents sampled from ranks
    ``rank_range[0] .. rank_range[1]-1`` (0-based) of ``retriever``'s results, positives removed.

    Skipping the very top ranks (FlagEmbedding's default range is 10–210) avoids unjudged relevant
    documents posing as negatives. ``retriever`` must be fitted on ``doc_texts``. Deterministic for a seed.
    """
    lo, hi = rank_range
    if not 0 <= lo < hi:
        raise ValueError(f"rank_range must be (start, end) with 0 <= start < end, got {rank_range}")
    if n_negatives < 1:
        raise ValueError("n_negatives must be at least 1")
    rng = np.random.default_rng(seed)
    hits = retriever.search([ex.query for ex in examples], mode=mode, k=hi)
    out = []
    for ex, ids in zip(examples, hits.ids):
        positives = set(ex.pos)
        pool = [doc_texts[d] for d in ids[lo:hi] if doc_texts[d] not in positives]
        if len(pool) < n_negatives:  # too few below the skipped ranks: widen upwards
            pool += [doc_texts[d] for d in ids[:lo] if doc_texts[d] not in positives]
        pick = rng.choice(len(pool), size=min(n_negatives, len(pool)), replace=False) if pool else []
        out.append(replace(ex, neg=[pool[i] for i in pick], neg_scores=None))
    return out


def add_teacher_scores(
    examples: Sequence[TrainingExample],
    teacher: Reranker,
    *,
    show_progress: bool = True,
) -> list[TrainingExample]:
    """Fill ``pos_scores`` / ``neg_scores`` with a teacher's scores (a cross-encoder, an LLM reranker, or
    an embedder wrapped as a reranker) for knowledge distillation."""
    out = []
    for ex in tqdm(examples, desc="Teacher scoring", unit="query", disable=not show_progress):
        texts = ex.pos + ex.neg
        scores = checked_scores(teacher, [(ex.query, t) for t in texts]).tolist()
        out.append(replace(ex, pos_scores=scores[: len(ex.pos)], neg_scores=scores[len(ex.pos):]))
    return out


class EmbedderTeacher:
    """An embedder used as a teacher: the score of a pair is its dense inner product."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        from flagstone.models.reranker import validate_pairs

        pairs = validate_pairs(pairs)
        q = self.embedder.encode([p[0] for p in pairs], is_query=True, show_progress=False).dense
        d = self.embedder.encode([p[1] for p in pairs], show_progress=False).dense
        return np.einsum("ij,ij->i", q, d).astype(np.float32)
