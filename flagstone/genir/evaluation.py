"""Scoring a generative retriever on a BEIR data set, in the report format of the other retrieval modes."""
from __future__ import annotations

import time
from collections.abc import Iterable

from flagstone.errors import DataError
from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.beir import BeirDataset
from flagstone.evaluation.metrics import METRICS, evaluate_run
from flagstone.evaluation.retrieval import DEFAULT_K, ModeResult, RetrievalReport
from flagstone.genir.model import GenerativeRetriever


def check_same_corpus(retriever: GenerativeRetriever, dataset: BeirDataset) -> None:
    """A generative retriever can only return the documents it was trained on: the data set must hold exactly
    those (a :class:`DataError` otherwise)."""
    model_ids, data_ids = set(retriever.docids.doc_ids), set(dataset.doc_ids)
    if model_ids != data_ids:
        raise DataError(f"the model was trained on {len(model_ids):,} documents and the data set has "
                        f"{len(data_ids):,} ({len(data_ids - model_ids):,} unknown to the model, "
                        f"{len(model_ids - data_ids):,} missing from the data set): train it on this corpus")


def evaluate_generative(
    retriever: GenerativeRetriever,
    dataset: BeirDataset,
    *,
    k_values: Iterable[int] = DEFAULT_K,
    metrics: Iterable[str] = METRICS,
    depth: int = DEFAULT_EVAL_DEPTH,
    relevance_level: int = 1,
) -> RetrievalReport:
    """Mode ``"genir"``: each judged query's top ``depth`` documents by constrained beam search (``depth``
    beams). The settings record the beam width, the docids the decoder produced that name no document (0 by
    construction) and the milliseconds per query."""
    k_values = tuple(sorted(set(int(k) for k in k_values)))
    if not k_values or k_values[-1] > depth:
        raise ValueError(f"cut-offs {k_values} need a depth of at least their largest (depth is {depth})")
    check_same_corpus(retriever, dataset)
    start = time.perf_counter()
    decoded = retriever.decode(dataset.query_texts(), depth)
    seconds = time.perf_counter() - start
    invalid = sum(doc is None for result in decoded for doc in result.documents)
    run = retriever.hits(decoded, depth).to_run(dataset.query_ids)
    report = RetrievalReport(dataset.name, "genir", k_values, settings={
        "depth": depth, "beams": depth, "relevance_level": relevance_level, "judged_queries": len(dataset.qrels),
        "documents": len(dataset.doc_ids), "invalid_docids": invalid,
        "ms_per_query": round(1000 * seconds / max(1, len(dataset.qrels)), 2), "genir": retriever.describe()})
    report.results["genir"] = ModeResult("genir", evaluate_run(run, dataset.qrels, k_values, metrics,
                                                                relevance_level=relevance_level), run, seconds)
    return report
