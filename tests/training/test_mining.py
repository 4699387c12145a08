from __future__ import annotations

import numpy as np

from flagstone.retrieval.retriever import Retriever
from flagstone.training.data import TrainingExample
from flagstone.training.mining import (
    EmbedderTeacher,
    add_teacher_scores,
    mine_hard_negatives,
)


def _corpus():
    from flagstone.corpora import python_docstrings

    ids, texts = python_docstrings(300)
    return ids, texts


def test_mined_negatives_come_from_the_rank_range_and_exclude_positives():
    ids, texts = _corpus()
    doc_text = dict(zip(ids, texts))
    retriever = Retriever(None, signals=["bm25"]).fit(ids, texts, show_progress=False)
    examples = [TrainingExample(texts[i][:60], [texts[i]]) for i in range(0, 50, 5)]
    mined = mine_hard_negatives(examples, retriever, doc_text, mode="bm25", rank_range=(2, 20), n_negatives=5)
    hits = retriever.search([ex.query for ex in examples], mode="bm25", k=20)
    for ex, ranked in zip(mined, hits.ids):
        allowed = {doc_text[d] for d in ranked[2:20]}
        assert len(ex.neg) == 5 and len(set(ex.neg)) == 5
        assert set(ex.neg) <= allowed
        assert not set(ex.neg) & set(ex.pos)
    again = mine_hard_negatives(examples, retriever, doc_text, mode="bm25", rank_range=(2, 20), n_negatives=5)
    assert again == mined  # deterministic for a seed


def test_teacher_scores_are_the_teachers_pair_scores(minilm):
    ex = [TrainingExample("open a file", ["Open file and return a stream."], ["Return the absolute value."])]
    scored = add_teacher_scores(ex, EmbedderTeacher(minilm), show_progress=False)
    q = minilm.encode(["open a file"], show_progress=False).dense[0]
    d = minilm.encode(["Open file and return a stream.", "Return the absolute value."], show_progress=False).dense
    np.testing.assert_allclose(scored[0].pos_scores + scored[0].neg_scores, d @ q, atol=1e-5)
    assert scored[0].pos_scores[0] > scored[0].neg_scores[0]


def test_mining_retriever_wears_the_cache(tiny_m3, tmp_path, monkeypatch):
    from flagstone.models.cache import CachedEmbedder, EmbeddingCache
    from flagstone.training.mining import mining_retriever

    ids, texts = _corpus()
    ids, texts = ids[:60], texts[:60]
    doc_text = dict(zip(ids, texts))
    examples = [TrainingExample(texts[i][:60], [texts[i]]) for i in range(0, 30, 5)]
    plain = mining_retriever(tiny_m3, ids, texts, mode="dense", show_progress=False)
    assert plain.signals == ("dense",) and plain.embedder is tiny_m3
    cache = EmbeddingCache(tmp_path)
    first = mining_retriever(tiny_m3, ids, texts, mode="dense", cache=cache, show_progress=False)
    assert isinstance(first.embedder, CachedEmbedder)
    calls = []
    original = tiny_m3.forward
    monkeypatch.setattr(tiny_m3, "forward", lambda *a, **kw: calls.append(len(a[0])) or original(*a, **kw))
    again = mining_retriever(tiny_m3, ids, texts, mode="dense", cache=EmbeddingCache(tmp_path), show_progress=False)
    mined = mine_hard_negatives(examples, again, doc_text, mode="dense", rank_range=(2, 20), n_negatives=5)
    assert sum(calls) == len(examples)  # the corpus came from the cache; only the queries were encoded
    monkeypatch.undo()
    assert mined == mine_hard_negatives(examples, plain, doc_text, mode="dense", rank_range=(2, 20), n_negatives=5)
    assert mining_retriever(None, ids, texts, mode="bm25", show_progress=False).signals == ("bm25",)
