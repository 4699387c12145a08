"""Retrieval evaluation on BEIR-format data: every mode, standard metrics, a table, JSON and TREC runs."""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flagstone._io import atomic_write
from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.beir import BeirDataset
from flagstone.evaluation.metrics import (
    METRICS,
    MetricReport,
    evaluate_run,
    rank_documents,
)
from flagstone.retrieval.retriever import HybridConfig, Retriever

DEFAULT_K = (1, 3, 5, 10, 100)


@dataclass
class ModeResult:
    mode: str
    metrics: MetricReport
    run: dict[str, dict[str, float]]
    seconds: float


@dataclass
class RetrievalReport:
    dataset: str
    model: str
    k_values: tuple[int, ...]
    results: dict[str, ModeResult] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    def table(self, metrics: Sequence[str] = ("ndcg@10", "mrr@10", "recall@100", "map@10")) -> str:
        """A markdown table: one row per mode, one column per metric."""
        metrics = [m for m in metrics if any(m in r.metrics.mean for r in self.results.values())]
        lines = ["| mode | " + " | ".join(metrics) + " | seconds |", "|---" * (len(metrics) + 2) + "|"]
        for mode, r in self.results.items():
            cells = [f"{r.metrics.mean[m]:.4f}" for m in metrics]
            lines.append(f"| {mode} | " + " | ".join(cells) + f" | {r.seconds:.1f} |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "k_values": list(self.k_values),
            "settings": self.settings,
            "modes": {m: {"metrics": r.metrics.mean, "seconds": r.seconds} for m, r in self.results.items()},
        }

    def save_json(self, path: str | Path) -> None:
        with atomic_write(path) as handle:
            json.dump(self.to_dict(), handle, indent=2)

    def write_trec_runs(self, folder: str | Path) -> list[Path]:
        """One TREC run file per mode: ``qid Q0 docid rank score tag``."""
        written = []
        for mode, r in self.results.items():
            path = Path(folder) / f"{self.dataset}.{mode}.trec"
            write_trec_run(r.run, path, tag=f"flagstone-{mode}")
            written.append(path)
        return written


def write_trec_run(run: dict[str, dict[str, float]], path: str | Path, tag: str = "flagstone") -> None:
    with atomic_write(path) as handle:
        for qid, docs in run.items():
            for rank, did in enumerate(rank_documents(docs), start=1):
                handle.write(f"{qid} Q0 {did} {rank} {docs[did]:.6f} {tag}\n")


def evaluate_retrieval(
    retriever: Retriever,
    dataset: BeirDataset,
    *,
    modes: Iterable[str] | None = None,
    k_values: Iterable[int] = DEFAULT_K,
    metrics: Iterable[str] = METRICS,
    hybrid: HybridConfig | None = None,
    fit: bool = True,
    depth: int = DEFAULT_EVAL_DEPTH,
    relevance_level: int = 1,
) -> RetrievalReport:
    """Index the corpus (unless ``fit=False``) and score each mode's top ``depth`` hits for the judged queries.

    ``depth`` is fixed rather than taken from the cut-offs because hybrid scores depend on it (see
    :data:`~flagstone.evaluation.DEFAULT_EVAL_DEPTH`); it is recorded in the report's settings. Queries
    without judgements are skipped (their count is in the settings); graded judgements are nDCG's gains and
    binary metrics count a document as relevant from ``relevance_level`` up.
    """
    k_values = tuple(sorted(set(int(k) for k in k_values)))
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    if not k_values:
        raise ValueError("give at least one cut-off")
    if k_values[-1] > depth:
        # scoring @k on fewer than k hits would quietly report a truncated ranking
        raise ValueError(f"cut-off {k_values[-1]} is deeper than the retrieval depth {depth}: raise the depth "
                         f"(--depth {k_values[-1]}) or drop the cut-off")
    modes = tuple(modes) if modes is not None else retriever.modes
    if fit:
        retriever.fit(dataset.doc_ids, dataset.doc_texts)
    query_ids, query_texts = dataset.query_ids, dataset.query_texts()
    report = RetrievalReport(
        dataset.name,
        retriever.embedder.name if retriever.embedder is not None else "none",
        k_values,
        settings={"depth": depth, "relevance_level": relevance_level,
                  "judged_queries": len(dataset.qrels), "unjudged_queries": dataset.unjudged_queries,
                  "documents": len(dataset.doc_ids), "empty_documents": dataset.empty_documents,
                  "embedder": repr(retriever.embedder) if retriever.embedder else None,
                  "bm25": retriever.bm25.config() if retriever.bm25 else None,
                  "hybrid": _hybrid_settings(retriever, hybrid)},
    )
    for mode in modes:
        start = time.perf_counter()
        hits = retriever.search(query_texts, mode=mode, k=depth, hybrid=hybrid)
        run = hits.to_run(query_ids)
        seconds = time.perf_counter() - start
        report.results[mode] = ModeResult(mode, evaluate_run(run, dataset.qrels, k_values, metrics,
                                                                 relevance_level=relevance_level), run, seconds)
    return report


def _hybrid_settings(retriever: Retriever, hybrid: HybridConfig | None) -> dict[str, object]:
    config = hybrid or retriever.hybrid
    weights = dict(config.weights) if config.weights is not None else retriever.default_weights()
    return {"weights": weights, "method": config.method, "normalize": config.normalize,
            "rrf_k": config.rrf_k, "candidates": config.candidates}
