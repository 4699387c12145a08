"""Re-order each query's first-stage ``Hits`` by a reranker's scores, keeping both scores as signals."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flagstone.models.reranker import Reranker, checked_scores
from flagstone.models.scoring import normalize_scores
from flagstone.retrieval.retriever import Hits


def rerank_hits(
    reranker: Reranker,
    queries: Sequence[str],
    hits: Hits,
    texts: Mapping[str, str],
    *,
    depth: int | None = None,
    first_stage_weight: float = 0.0,
    show_progress: bool = False,
) -> Hits:
    """Re-order each query's first ``depth`` hits (all by default) by the reranker's score.

    With ``first_stage_weight`` w > 0 the final score is ``(1 - w) * rerank + w * first stage``, both
    min-max normalised per query (interpolating keeps what the first stage knows). The raw scores are
    kept as the signals ``rerank`` and ``first_stage``; the returned ``Hits`` has mode
    ``"<first stage mode>+rerank"`` and one row per query, best first.
    """
    from tqdm.auto import tqdm

    if len(queries) != len(hits):
        raise ValueError(f"{len(queries)} queries for {len(hits)} rows of hits")
    if not 0.0 <= first_stage_weight <= 1.0:
        raise ValueError("first_stage_weight must be between 0 and 1")
    rows: list[tuple[list[str], np.ndarray, np.ndarray]] = []
    for qi in tqdm(range(len(queries)), desc="Reranking", unit="query", disable=not show_progress):
        ids = hits.ids[qi][:depth] if depth is not None else hits.ids[qi]
        missing = [d for d in ids if d not in texts]
        if missing:
            raise KeyError(f"no text for document id {missing[0]!r}")
        scores = checked_scores(reranker, [(queries[qi], texts[d]) for d in ids]) if ids else np.zeros(0, np.float32)
        rows.append((list(ids), scores, np.asarray(hits.scores[qi][: len(ids)], dtype=np.float32)))
    width = max((len(r[0]) for r in rows), default=0)
    rerank_signal = np.full((len(queries), width), -np.inf, dtype=np.float32)
    first_signal = np.full((len(queries), width), -np.inf, dtype=np.float32)
    for qi, (ids, scores, first) in enumerate(rows):
        rerank_signal[qi, : len(ids)] = scores
        first_signal[qi, : len(ids)] = first
    unordered = Hits(mode=f"{hits.mode}+rerank", ids=[r[0] for r in rows], scores=rerank_signal.copy(),
                     signals={"rerank": rerank_signal, "first_stage": first_signal})
    return interpolate_with_first_stage(unordered, first_stage_weight)


def interpolate_with_first_stage(reranked: Hits, weight: float) -> Hits:
    """Re-order reranked hits by ``(1 - weight) * rerank + weight * first stage`` (both min-max normalised
    per query) from the ``rerank`` and ``first_stage`` signals that :func:`rerank_hits` keeps, so a
    weight can be tuned without scoring again. ``weight=0`` orders by the reranker alone."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError("first_stage_weight must be between 0 and 1")
    rerank_all, first_all = reranked.signals["rerank"], reranked.signals["first_stage"]
    ids_out = []
    arrays = [np.full_like(rerank_all, -np.inf) for _ in range(3)]
    for qi, row in enumerate(reranked.ids):
        n = len(row)
        r, f = rerank_all[qi, :n].astype(np.float64), first_all[qi, :n].astype(np.float64)
        final = r if weight == 0 else (1 - weight) * normalize_scores(r, "minmax") + weight * normalize_scores(f, "minmax")
        order = np.argsort(-final, kind="stable")
        ids_out.append([row[i] for i in order])
        for array, values in zip(arrays, (final, r, f)):
            array[qi, :n] = values[order]
    return Hits(mode=reranked.mode, ids=ids_out, scores=arrays[0],
                signals={"rerank": arrays[1], "first_stage": arrays[2]})
