from __future__ import annotations

import pytest
import torch

from flagstone.evaluation.beir import BeirDataset
from flagstone.models.embedder import Embedder
from flagstone.training.data import TrainingExample
from flagstone.training.embedder import EmbedderTrainingSettings, train_embedder
from flagstone.training.loop import TrainingConfig
from flagstone.training.validation import RetrievalValidation, split_queries


def _task():
    from flagstone.corpora import python_docstrings

    _, texts = python_docstrings(120)
    docs = {f"d{i}": "Return " + t[:80] for i, t in enumerate(texts)}
    queries = {f"q{i}": t[:40] for i, t in enumerate(texts)}
    return docs, queries


def test_validation_scores_the_model_while_it_trains(tiny_m3_dir, tmp_path):
    docs, queries = _task()
    train_ids, held_ids = split_queries(sorted(queries), 20, seed=0)
    held_out = BeirDataset("held-out", list(docs), list(docs.values()), queries,
                           {q: {"d" + q[1:]: 1} for q in held_ids})
    ids = list(docs)
    examples = [TrainingExample(queries[q], [docs["d" + q[1:]]], [docs[ids[(int(q[1:]) + k) % len(ids)]]
                                                                   for k in (7, 13, 29)]) for q in train_ids]
    embedder = Embedder(str(tiny_m3_dir), pooling="mean", show_progress=False)
    check = RetrievalValidation(embedder, held_out, every=5, modes=("dense", "sparse", "hybrid"))
    start = check.evaluate(0)
    # postings per document of the sparse index it built: the encoder's active terms, counted directly
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = embedder.encode(held_out.doc_texts, dense=False, sparse=True).sparse
    assert start["sparse_terms_per_doc"] == pytest.approx(len(encoded.token_ids) / len(docs))
    settings = EmbedderTrainingSettings(heads=("dense", "sparse", "colbert"), group_size=4, batch_size=4,
                                        query_max_length=32, passage_max_length=48, temperature=0.05)
    config = TrainingConfig(epochs=2, learning_rate=5e-3, warmup_ratio=0.0, show_progress=False)
    result = train_embedder(embedder, examples, tmp_path / "out", settings=settings, config=config, on_step=check)
    assert [row["step"] for row in check.history] == [0, *range(5, result.steps + 1, 5)]
    assert {"dense_ndcg@10", "sparse_recall@100", "hybrid_ndcg@10"} <= set(start)
    assert check.best("dense_ndcg@10")["dense_ndcg@10"] > start["dense_ndcg@10"]
    # the hook left the trained folder identical to what the embedder now computes
    saved = Embedder(str(tmp_path / "out"), show_progress=False)
    assert abs(saved.encode(["a query"]).dense - embedder.encode(["a query"]).dense).max() < 1e-5


def test_split_queries_is_reproducible_and_checked():
    ids = [f"q{i}" for i in range(50)]
    train, held = split_queries(ids, 10, seed=3)
    assert len(held) == 10 and sorted(train + held) == sorted(ids)
    assert (train, held) == split_queries(ids, 10, seed=3)
    assert held != split_queries(ids, 10, seed=4)[1]
    with pytest.raises(ValueError, match="held_out"):
        split_queries(ids, 50)
    with pytest.raises(ValueError, match="every"):
        RetrievalValidation(None, BeirDataset("x", [], [], {}, {"q": {"d": 1}}), every=0)
