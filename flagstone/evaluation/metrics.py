"""Ranking metrics with trec_eval's conventions, so numbers match pytrec_eval exactly.

Conventions: a run is ranked by score descending, ties broken by document id descending (as trec_eval
does); a document is relevant when its judgement is >= ``relevance_level`` (default 1, pytrec_eval's
``relevance_level``) for the binary metrics; nDCG gains are the (graded) judgement values with a
log2(rank + 1) discount and the ideal ranking taken over all judged documents; MAP@k and Recall@k divide
by the number of relevant documents; MRR@k is 1 / rank of the first relevant document within k.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flagstone.errors import NonFiniteError

METRICS = ("ndcg", "mrr", "recall", "map", "precision")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def rank_documents(doc_scores: Mapping[str, float]) -> list[str]:
    """Document ids best first, trec_eval order (score desc, then id desc); NonFiniteError for a NaN or
    infinite score, which has no place in that order."""
    bad = next((d for d, s in doc_scores.items() if not math.isfinite(s)), None)
    if bad is not None:
        raise NonFiniteError(f"the run scores document {bad!r} {doc_scores[bad]}: scores must be finite numbers")
    return [d for d, _ in sorted(doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def query_metrics(ranked: list[str], judged: Mapping[str, int], k_values: Iterable[int],
                  metrics: Iterable[str] = METRICS, *, relevance_level: int = 1) -> dict[str, float]:
    """Metrics of one query's ranking, keyed like ``ndcg@10``."""
    relevant = {d for d, rel in judged.items() if rel >= relevance_level}
    n_rel = len(relevant)
    ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)
    metrics = tuple(metrics)
    out: dict[str, float] = {}
    for k in k_values:
        top = ranked[:k]
        hits = [d in relevant for d in top]
        if "ndcg" in metrics:
            dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top) if judged.get(d, 0) > 0)
            idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal[:k]))
            out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        if "mrr" in metrics:
            first = next((i for i, h in enumerate(hits) if h), None)
            out[f"mrr@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
        if "recall" in metrics:
            out[f"recall@{k}"] = sum(hits) / n_rel if n_rel else 0.0
        if "map" in metrics:
            found, precision_sum = 0, 0.0
            for i, h in enumerate(hits):
                if h:
                    found += 1
                    precision_sum += found / (i + 1)
            out[f"map@{k}"] = precision_sum / n_rel if n_rel else 0.0
        if "precision" in metrics:
            out[f"precision@{k}"] = sum(hits) / k
    return out


@dataclass(frozen=True)
class MetricReport:
    """Per-query metrics and their means over the judged queries (a query with no results scores 0)."""

    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]


def evaluate_run(run: Run, qrels: Qrels, k_values: Iterable[int] = (1, 3, 5, 10, 100),
                 metrics: Iterable[str] = METRICS, *, relevance_level: int = 1) -> MetricReport:
    """Mean metrics over the queries in ``qrels`` (queries of ``run`` without judgements are skipped)."""
    if relevance_level < 1:
        raise ValueError(f"relevance_level must be at least 1, got {relevance_level}")
    k_values = sorted(set(int(k) for k in k_values))
    if not k_values or k_values[0] < 1:
        raise ValueError("k values must be positive integers")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {METRICS}")
    per_query = {q: query_metrics(rank_documents(run.get(q, {})), judged, k_values, metrics,
                                  relevance_level=relevance_level)
                 for q, judged in qrels.items()}
    names = next(iter(per_query.values())).keys() if per_query else []
    mean = {m: sum(v[m] for v in per_query.values()) / len(per_query) for m in names}
    return MetricReport(per_query, mean)
