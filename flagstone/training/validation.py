"""Retrieval validation during training: an ``on_step`` hook that indexes a corpus with the model being
trained and scores held-out queries (nDCG@10 and friends), so users see whether training helps while it runs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flagstone.evaluation.beir import BeirDataset
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import HybridConfig, Retriever


@dataclass
class RetrievalValidation:
    """Call it as ``train_embedder(embedder, ..., on_step=validation)`` with the same :class:`Embedder`
    passed as the base: every ``every`` optimiser steps it evaluates ``modes`` (signal names, or "hybrid"
    for all trained heads combined) on ``dataset``'s judged queries and appends the scores to ``history``
    (with ``sparse_terms_per_doc``, the sparse index's postings per document, when a sparse head is scored).

    Evaluation runs under bfloat16 autocast when ``bfloat16`` is set (about 2x faster on CPUs), never
    touches the training state, and leaves the encoder in eval mode (the training loop switches it back).
    """

    embedder: Embedder
    dataset: BeirDataset
    every: int
    modes: tuple[str, ...] = ("dense",)
    k_values: tuple[int, ...] = (10, 100)
    hybrid: HybridConfig | None = None
    bfloat16: bool = True
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("every must be at least 1 optimiser step")
        if not self.dataset.qrels:
            raise ValueError(f"validation set {self.dataset.name!r} has no judged queries")

    def __call__(self, step: int, loss: float | None = None) -> None:
        if step % self.every == 0:
            self.evaluate(step)

    def evaluate(self, step: int = 0) -> dict[str, float]:
        """Score the model as it is now; returns (and records) ``{"step", "<mode>_ndcg@10", ...}``."""
        import torch
        from tqdm.auto import tqdm

        signals = [m for m in self.modes if m != "hybrid"] or list(self.embedder.available_outputs)
        self.embedder.model.eval()
        retriever = Retriever(self.embedder, signals=signals)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
            report = evaluate_retrieval(retriever, self.dataset, modes=self.modes, k_values=self.k_values,
                                        metrics=("ndcg", "recall"), hybrid=self.hybrid)
        row: dict[str, float] = {"step": step}
        for mode, result in report.results.items():
            row.update({f"{mode}_{name}": value for name, value in result.metrics.mean.items()})
        sparse = retriever.describe()["indexes"].get("sparse", {})
        if "postings" in sparse:  # what FLOPS regularisation trades against quality: active terms per document
            row["sparse_terms_per_doc"] = sparse["postings"] / len(retriever)
        self.history.append(row)
        shown = ", ".join(f"{m} nDCG@10 {row[f'{m}_ndcg@10']:.4f}" for m in self.modes)
        tqdm.write(f"step {step}: {shown} ({self.dataset.name})")
        return row

    def best(self, key: str) -> dict[str, float]:
        """The history row with the highest ``key`` (e.g. "dense_ndcg@10")."""
        if not self.history:
            raise ValueError("nothing evaluated yet")
        return max(self.history, key=lambda row: row[key])


def split_queries(query_ids: Iterable[str], held_out: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split ids into (train, held-out) at random but reproducibly, keeping the input order inside each."""
    import numpy as np

    ids = list(query_ids)
    if not 0 < held_out < len(ids):
        raise ValueError(f"held_out must be between 1 and {len(ids) - 1}, got {held_out}")
    chosen = set(np.random.default_rng(seed).choice(len(ids), size=held_out, replace=False).tolist())
    return [q for i, q in enumerate(ids) if i not in chosen], [q for i, q in enumerate(ids) if i in chosen]
