"""Collections as they are: empty documents, queries without judgements, graded relevance (CISI, Cranfield)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from flagstone.errors import EmptyDocumentsWarning
from flagstone.evaluation.beir import load_beir
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.retrieval.retriever import Retriever
from tests.evaluation.test_beir import make_beir

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "beir"
needs_data = pytest.mark.skipif(not (DATA / "cranfield").is_dir() or not (DATA / "cisi").is_dir(),
                                reason=f"CISI / Cranfield not found under {DATA}")


def _quirky(root: Path) -> Path:
    """Two empty documents (one judged relevant), one unjudged query, grades 1-3."""
    corpus = [{"_id": "d1", "title": "Zinc", "text": "Zinc lozenges shorten colds."},
              {"_id": "d2", "title": "", "text": ""},
              {"_id": "d3", "title": "Stars", "text": "Neutron stars are collapsed cores."},
              {"_id": "d4", "text": "   "},
              {"_id": "d5", "title": "Colds", "text": "Rest and fluids for a cold."}]
    queries = [{"_id": "q1", "text": "zinc colds"}, {"_id": "q2", "text": "neutron stars"},
               {"_id": "q3", "text": "nobody judged this"}]
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t3\nq1\td5\t1\nq1\td2\t2\nq2\td3\t1\n"
    return make_beir(root, corpus=corpus, queries=queries, qrels=qrels)


def test_empty_documents_load_with_one_warning_and_unjudged_queries_are_counted(tmp_path):
    with pytest.warns(EmptyDocumentsWarning, match=r"2 document\(s\) without text \('d2', 'd4'\)") as caught:
        data = load_beir(_quirky(tmp_path / "q"))
    assert len(caught) == 1
    assert data.doc_texts[1] == "" and data.doc_texts[3] == "" and data.empty_documents == 2
    assert data.query_ids == ["q1", "q2"] and data.unjudged_queries == 1
    assert data.describe() == "5 documents (2 empty), 2 judged queries, 1 without judgements skipped"


def test_an_empty_document_is_indexed_and_scored_like_any_other(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyDocumentsWarning)
        data = load_beir(_quirky(tmp_path / "q"))
    pytrec_eval = pytest.importorskip("pytrec_eval")
    report = evaluate_retrieval(Retriever(None, signals=["bm25"]), data, modes=["bm25"], k_values=(1, 3, 5))
    run = report.results["bm25"].run
    assert set(run) == {"q1", "q2"}  # the unjudged query is not evaluated
    assert report.settings["unjudged_queries"] == 1 and report.settings["empty_documents"] == 2
    reference = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.1,3,5", "recall.5"}).evaluate(run)
    for q, ref in reference.items():
        assert report.results["bm25"].metrics.per_query[q]["ndcg@5"] == pytest.approx(ref["ndcg_cut_5"], abs=1e-9)
        assert report.results["bm25"].metrics.per_query[q]["recall@5"] == pytest.approx(ref["recall_5"], abs=1e-9)


def test_empty_document_vector_is_what_sentence_transformers_gives(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ours = minilm.encode(["", "Zinc lozenges shorten colds."]).dense
    theirs = sentence_transformers.SentenceTransformer(str(minilm.path), device="cpu").encode(
        ["", "Zinc lozenges shorten colds."], normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    from flagstone.errors import InvalidTextError

    with pytest.raises(InvalidTextError, match="#0 is empty"):  # an empty *query* is still a mistake
        minilm.encode([""], is_query=True)


@needs_data
def test_cranfield_and_cisi_evaluate_as_pytrec_eval_does():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    with pytest.warns(EmptyDocumentsWarning, match=r"2 document\(s\) without text \('471', '995'\)"):
        cranfield = load_beir(DATA / "cranfield")
    assert (len(cranfield.doc_ids), len(cranfield.qrels), cranfield.unjudged_queries) == (1400, 225, 0)
    assert cranfield.qrels["125"]["995"] >= 1 and set().union(*map(dict.values, cranfield.qrels.values())) == {
        1, 2, 3, 4}
    cisi = load_beir(DATA / "cisi")
    assert (len(cisi.doc_ids), len(cisi.qrels), cisi.unjudged_queries) == (1460, 76, 36)
    for data in (cranfield, cisi):
        report = evaluate_retrieval(Retriever(None, signals=["bm25"]), data, modes=["bm25"], k_values=(10, 100))
        run = report.results["bm25"].run
        ours = report.results["bm25"].metrics
        for level in (1, 2):
            reference = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10", "map_cut.100", "recall.100"},
                                                       relevance_level=level).evaluate(run)
            if level == 2:
                ours = evaluate_retrieval(Retriever(None, signals=["bm25"]), data, modes=["bm25"],
                                          k_values=(10, 100), relevance_level=2).results["bm25"].metrics
            for q, ref in reference.items():
                assert ours.per_query[q]["ndcg@10"] == pytest.approx(ref["ndcg_cut_10"], abs=1e-9)
                assert ours.per_query[q]["map@100"] == pytest.approx(ref["map_cut_100"], abs=1e-9)
                assert ours.per_query[q]["recall@100"] == pytest.approx(ref["recall_100"], abs=1e-9)
        assert 0.2 < ours.mean["ndcg@10"] < 0.6  # BM25 on these collections: about 0.3-0.4


@needs_data
def test_eval_command_on_cranfield_prints_one_warning_and_the_table(capsys):
    from flagstone.cli import main

    assert main(["eval", str(DATA / "cranfield"), "--modes", "bm25", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == (f"flagstone: warning: {DATA / 'cranfield' / 'corpus.jsonl'}: 2 document(s) without "
                           f"text ('471', '995'), indexed as the empty text")
    assert "1,400 documents (2 empty), 225 judged queries" in out and "| bm25 |" in out


def test_search_and_index_build_read_a_jsonl_corpus_with_an_empty_document(tmp_path, capsys):
    from flagstone.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "Zinc lozenges shorten colds."}\n{"_id": "b", "title": "", "text": ""}\n'
                      '{"_id": "c", "text": "Neutron stars are dense."}\n')
    assert main(["search", str(corpus), "-q", "zinc", "--mode", "bm25", "-k", "3", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == f"flagstone: warning: {corpus}: 1 document(s) without text ('b'), indexed as the empty text"
    assert "a" in out
    assert main(["index", "build", str(corpus), "-o", str(tmp_path / "idx"), "--cache-dir", str(tmp_path / "c"),
                 "--quiet"]) == 0
    assert "1 document(s) without text" in capsys.readouterr().err
