from __future__ import annotations

import numpy as np
import pytest

from flagstone.index.sparse import SparseIndex
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.lexical import LexicalTokenizer

DOCS = [
    "The cat sat on the mat.",
    "Dogs chase cats around the garden.",
    "A cat and a dog are friends.",
    "Birds fly high above the trees, and the cat watches the birds.",
    "Stock markets fell sharply on Monday as investors sold shares.",
    "The cat, the cat, the cat: cats everywhere.",
]
QUERIES = ["cat", "cats and dogs", "birds watching", "market shares fell", "cat cat", "unknownword"]


@pytest.mark.parametrize("k1,b", [(1.2, 0.75), (1.5, 0.75), (0.9, 0.4)])
@pytest.mark.parametrize("stemmer", [None, "english"])
def test_scores_equal_bm25s_lucene(k1, b, stemmer):
    bm25s = pytest.importorskip("bm25s")
    tok = LexicalTokenizer(stemmer=stemmer)
    bm25 = BM25(k1=k1, b=b, tokenizer=tok)
    index = SparseIndex(0)
    weights = bm25.fit_transform(DOCS)
    index = SparseIndex(weights.vocab_size)
    index.add([str(i) for i in range(len(DOCS))], weights)

    reference = bm25s.BM25(k1=k1, b=b, method="lucene")
    reference.index(tok.tokenize(DOCS), show_progress=False)
    result = index.search(bm25.transform_queries(QUERIES), k=len(DOCS))
    for qi, words in enumerate(tok.tokenize(QUERIES)):
        expected = reference.get_scores(words) if words else np.zeros(len(DOCS))
        ours = np.zeros(len(DOCS))
        ours[result.positions[qi]] = result.scores[qi]
        assert np.allclose(ours, expected, atol=1e-5), QUERIES[qi]


def test_tokenizer_lowercases_drops_stopwords_and_stems():
    tok = LexicalTokenizer()
    assert tok("The Cats are RUNNING in gardens") == ["cat", "run", "garden"]
    assert LexicalTokenizer(stemmer=None, stopwords=None)("The cats") == ["the", "cats"]


def test_repeated_query_terms_count_twice_and_unknown_terms_match_nothing():
    bm25 = BM25()
    weights = bm25.fit_transform(DOCS)
    index = SparseIndex(weights.vocab_size)
    index.add(list("abcdef"), weights)
    once = index.search(bm25.transform_queries(["cat"]), k=1).scores[0, 0]
    twice = index.search(bm25.transform_queries(["cat cat"]), k=1).scores[0, 0]
    assert twice == pytest.approx(2 * once)
    assert index.search(bm25.transform_queries(["zebra"]), k=3).scores.max() == 0


def test_bm25_needs_documents_and_valid_parameters():
    from flagstone.errors import InvalidTextError

    with pytest.raises(InvalidTextError):
        BM25().fit_transform([])
    with pytest.raises(ValueError):
        BM25(b=2.0)


def test_save_and_load_round_trip(tmp_path):
    bm25 = BM25(k1=0.9, b=0.4)
    bm25.fit_transform(DOCS)
    bm25.save(tmp_path / "bm25.json")
    loaded = BM25.load(tmp_path / "bm25.json")
    assert loaded.config() == bm25.config()
    a, b = bm25.transform_queries(QUERIES), loaded.transform_queries(QUERIES)
    assert a.to_dicts() == b.to_dicts() and np.allclose(loaded.idf, bm25.idf)
    (tmp_path / "bad.json").write_text("{}")
    from flagstone.errors import DataError

    with pytest.raises(DataError, match="not a Flagstone BM25 model"):
        BM25.load(tmp_path / "bad.json")
