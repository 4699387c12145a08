from __future__ import annotations

import numpy as np
import pytest

from tests.genir.corpus import corpus
from flagstone.errors import DataError
from flagstone.genir.docids import atomic_docids, semantic_docids
from flagstone.genir.model import GenerativeRetriever, GenIRFormatError
from flagstone.genir.settings import GenIRModelConfig, GenIRTrainingSettings
from flagstone.genir.training import pseudo_queries, train_generative_retriever

TINY = GenIRModelConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128, max_text_tokens=32)


def sparse_semantic_ids(n: int = 20, seed: int = 0):
    """Semantic ids whose code space (depth x width) is much larger than the corpus, so an unconstrained
    decoder easily lands on a sequence that names no document."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return semantic_docids([f"d{i}" for i in range(n)], vectors, branching=4, leaf_size=3, seed=seed)


def test_constrained_decoding_of_an_untrained_model_only_yields_docids():
    docids = sparse_semantic_ids()
    retriever = GenerativeRetriever.initialise(docids, config=TINY, seed=3)
    valid = {docids.token_sequence(i) for i in range(len(docids))}
    _, queries = corpus(12)
    decoded = retriever.decode(queries, 10)
    for result in decoded:
        assert len(result.sequences) == 10
        assert all(seq in valid for seq in result.sequences)
        assert all(doc is not None for doc in result.documents)
        assert len(set(result.documents)) == 10
        assert result.scores == sorted(result.scores, reverse=True)
    # the same model without the trie invents docids: the constraint is what keeps the outputs valid
    free = retriever.decode(queries, 10, constrained=False)
    assert sum(doc is None for result in free for doc in result.documents) > 0
    hits = retriever.search(queries[:2], k=25)  # more than the corpus holds: every document once, then padding
    assert hits.mode == "genir" and [len(row) for row in hits.ids] == [20, 20]
    assert all(len(set(row)) == 20 and set(row) <= set(docids.doc_ids) for row in hits.ids)
    assert np.isneginf(hits.scores[:, 20:]).all() and np.isfinite(hits.scores[:, :20]).all()


@pytest.mark.parametrize("kind", ["atomic", "semantic"])
def test_indexing_a_tiny_corpus_reaches_recall_one_on_its_own_texts(kind):
    ids, texts = corpus(12)
    if kind == "atomic":
        docids = atomic_docids(ids)
    else:
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(ids), 8)).astype(np.float32)
        docids = semantic_docids(ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), branching=3,
                                 leaf_size=3)
    result = train_generative_retriever(texts, docids, config=TINY, settings=GenIRTrainingSettings(
        epochs=60, batch_size=12, learning_rate=3e-3, pseudo_queries=0, show_progress=False))
    hits = result.retriever.search(texts, k=1)
    assert [row[0] for row in hits.ids] == ids
    assert result.losses[-1] < result.losses[0] / 10


def test_save_and_load_round_trip(tmp_path):
    docids = sparse_semantic_ids()
    retriever = GenerativeRetriever.initialise(docids, config=TINY, seed=1)
    retriever.training = {"note": "kept"}
    folder = retriever.save(tmp_path / "genir")
    loaded = GenerativeRetriever.load(folder)
    assert loaded.docids == docids and loaded.config == TINY and loaded.training == {"note": "kept"}
    queries = ["how do I read a file", "sort a list in place"]
    before, after = retriever.search(queries, k=5), loaded.search(queries, k=5)
    assert before.ids == after.ids
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-5)
    with pytest.raises(DataError, match="--overwrite"):
        retriever.save(folder)
    retriever.save(folder, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by Flagstone"):
        retriever.save(tmp_path / "other", overwrite=True)
    with pytest.raises(GenIRFormatError, match="not a generative retriever|missing or unreadable"):
        GenerativeRetriever.load(tmp_path / "other")


def test_pseudo_queries_are_the_first_sentence_then_word_spans():
    import random

    text = "Zinc shortens colds. " + " ".join(f"w{i}" for i in range(100))
    queries = pseudo_queries(text, 3, (5, 8), random.Random(0))
    assert queries[0] == "Zinc shortens colds."
    for span in queries[1:]:
        words = span.split()
        assert 5 <= len(words) <= 8 and span in text
    assert pseudo_queries(text, 0, (5, 8), random.Random(0)) == []


def test_training_refuses_queries_about_unknown_documents():
    ids, texts = corpus(3)
    with pytest.raises(DataError, match="outside the corpus"):
        train_generative_retriever(texts, atomic_docids(ids), queries=[("q", "nope")], config=TINY,
                                   settings=GenIRTrainingSettings(epochs=1, show_progress=False))


def test_a_text_that_spells_a_docid_token_is_read_as_words():
    retriever = GenerativeRetriever.initialise(atomic_docids(["a", "b"]), config=TINY)
    (ids,) = retriever.prompt_ids(["zinc <d1> colds"])
    assert all(i < retriever.first_docid_token for i in ids)
