"""LM-written pseudo-queries (doc2query / DSI-QG style): generation, the on-disk cache, and training on them."""
from __future__ import annotations

import json

import pytest

from flagstone.errors import DataError
from flagstone.genir import query_generation
from flagstone.genir.docids import atomic_docids
from flagstone.genir.query_generation import (
    QueryGenerationSettings,
    clean_reply,
    generate_pseudo_queries,
    is_usable,
)
from flagstone.genir.settings import GenIRTrainingSettings
from flagstone.genir.training import train_generative_retriever
from tests.genir.corpus import corpus
from tests.genir.test_model import TINY
from tests.helpers import build_tiny_causal_lm

FAST = QueryGenerationSettings(document_tokens=24, max_new_tokens=8, batch_size=4)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replies_are_cached_and_an_interrupted_run_resumes(tiny_causal_lm_dir, tmp_path):
    _, texts = corpus(6)
    first = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    assert first.generated_documents == 6 and first.replies == 6 and len(first.queries) == 6
    assert first.seconds > 0 and first.recorded_seconds == pytest.approx(first.seconds, rel=0.01)
    lines = _lines(first.cache_file)
    assert lines[0]["format"] == "flagstone-pseudo-queries" and len(lines) == 7
    assert {row["doc"] for row in lines[1:]} == {query_generation.text_hash(t) for t in texts}

    again = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    assert again.generated_documents == 0 and again.seconds == 0 and again.queries == first.queries
    assert again.recorded_seconds > 0  # what the queries cost is remembered

    # a run killed after two documents, in the middle of writing the third line
    raw = first.cache_file.read_text().splitlines(keepends=True)
    first.cache_file.write_text("".join(raw[:3]) + raw[3][:15])
    resumed = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path,
                                      show_progress=False)
    assert resumed.generated_documents == 4
    assert len(_lines(resumed.cache_file)) == 7  # the torn line is gone, every document has one line
    kept = {query_generation.text_hash(t) for t in texts} & {row["doc"] for row in _lines(resumed.cache_file)[1:3]}
    assert len(kept) == 2
    for i, text in enumerate(texts):
        if query_generation.text_hash(text) in kept:  # read back, not regenerated
            assert resumed.queries[i] == first.queries[i]


def test_left_padded_batches_write_what_one_document_at_a_time_writes(tiny_causal_lm_dir, tmp_path):
    _, texts = corpus(8)
    batched = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path / "a",
                                      show_progress=False)
    single = generate_pseudo_queries(texts, tiny_causal_lm_dir, cache_dir=tmp_path / "b", show_progress=False,
                                     settings=QueryGenerationSettings(document_tokens=24, max_new_tokens=8,
                                                                      batch_size=1))
    assert batched.cache_file.name == single.cache_file.name  # the batch size is not part of the key
    assert batched.queries == single.queries


def test_the_cache_key_changes_with_the_model_the_prompt_and_the_settings(tiny_causal_lm_dir, tmp_path, monkeypatch):
    texts = corpus(2)[1]
    base = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    other_lm = build_tiny_causal_lm(tmp_path / "other-lm", chat_template=True, seed=1)
    other = generate_pseudo_queries(texts, other_lm, settings=FAST, cache_dir=tmp_path, show_progress=False)
    assert other.cache_file != base.cache_file and other.generated_documents == 2
    sampled = generate_pseudo_queries(texts, tiny_causal_lm_dir, cache_dir=tmp_path, show_progress=False,
                                      settings=QueryGenerationSettings(queries_per_document=3, document_tokens=24,
                                                                       max_new_tokens=8))
    assert sampled.cache_file != base.cache_file and sampled.replies == 6
    monkeypatch.setattr(query_generation, "PROMPT_VERSION", query_generation.PROMPT_VERSION + 1)
    reprompted = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path,
                                         show_progress=False)
    assert reprompted.cache_file != base.cache_file and reprompted.generated_documents == 2


def test_sampling_is_seeded(tiny_causal_lm_dir, tmp_path):
    texts = corpus(3)[1]
    settings = QueryGenerationSettings(queries_per_document=4, document_tokens=24, max_new_tokens=8, seed=3)
    a = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=settings, cache_dir=tmp_path / "a",
                                show_progress=False)
    b = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=settings, cache_dir=tmp_path / "b",
                                show_progress=False)
    assert a.queries == b.queries and a.replies == 12
    assert any(len(set(q)) > 1 for q in a.queries)  # sampled, not the greedy reply four times


def test_unusable_replies_are_counted_and_left_out(tiny_causal_lm_dir, tmp_path):
    texts = corpus(4)[1]
    out = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    assert out.unusable == 0  # the first token must start a word
    # what a small chat LM writes now and then: a bare label, punctuation, a label repeated
    lines = _lines(out.cache_file)
    bad = {lines[1]["doc"]: "Search query:", lines[2]["doc"]: "?!", lines[3]["doc"]: "search_query: search_query:"}
    for row in lines[1:]:
        row["replies"] = [bad.get(row["doc"], row["replies"][0])]
    out.cache_file.write_text("".join(json.dumps(row) + "\n" for row in lines))
    again = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    assert again.generated_documents == 0
    assert again.replies == 4 and again.unusable == 3 and again.documents_without_query == 3
    assert sorted(len(q) for q in again.queries) == [0, 0, 0, 1]  # never replaced by spans or anything else
    assert again.stats()["unusable"] == 3


def test_reply_clean_up_and_usability():
    assert clean_reply('Search query: "zinc lozenges cold"\nmore text') == "zinc lozenges cold"
    assert clean_reply("search_query: search_query: bee dance") == "bee dance"
    assert clean_reply("  honey bee dance  ") == "honey bee dance"
    assert not is_usable(clean_reply("\n")) and not is_usable("?!") and not is_usable('""')
    assert is_usable("CRISPR") and is_usable("5")


def test_a_damaged_cache_line_is_an_error(tiny_causal_lm_dir, tmp_path):
    texts = corpus(3)[1]
    out = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    lines = out.cache_file.read_text().splitlines(keepends=True)
    out.cache_file.write_text(lines[0] + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(DataError, match="damaged pseudo-query line"):
        generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)


WORDS = ["apple", "garden", "mountain", "river", "window", "pencil", "castle", "rocket", "blanket", "ladder",
         "tunnel", "orchard"]


def test_training_learns_the_generated_queries():
    """Queries that share no word with their documents: only a model trained on them can map them."""
    ids, texts = corpus(12)
    generated = [[f"{word} {WORDS[(k + 5) % 12]}"] for k, word in enumerate(WORDS)]
    docids = atomic_docids(ids)
    common = dict(epochs=60, batch_size=12, learning_rate=3e-3, show_progress=False)
    with_llm = train_generative_retriever(texts, docids, config=TINY, generated_queries=generated,
                                          settings=GenIRTrainingSettings(pseudo_queries=1, pseudo_query_source="llm",
                                                                         **common))
    assert with_llm.examples_per_epoch == 24
    assert with_llm.retriever.training["generated_pseudo_queries"] == 12
    assert with_llm.retriever.training["settings"]["pseudo_query_source"] == "llm"
    queries = [q[0] for q in generated]
    assert [row[0] for row in with_llm.retriever.search(queries, k=1).ids] == ids
    without = train_generative_retriever(texts, docids, config=TINY,
                                         settings=GenIRTrainingSettings(pseudo_queries=0, **common))
    assert sum(row[0] == d for row, d in zip(without.retriever.search(queries, k=1).ids, ids)) < 6


def test_generated_queries_go_with_the_llm_source_only():
    ids, texts = corpus(3)
    docids = atomic_docids(ids)
    with pytest.raises(ValueError, match="exactly when"):
        train_generative_retriever(texts, docids, config=TINY, settings=GenIRTrainingSettings(
            pseudo_query_source="llm", show_progress=False))
    with pytest.raises(ValueError, match="exactly when"):
        train_generative_retriever(texts, docids, config=TINY, generated_queries=[["a"]] * 3,
                                   settings=GenIRTrainingSettings(show_progress=False))
    with pytest.raises(ValueError, match="generated queries for 2 documents"):
        train_generative_retriever(texts, docids, config=TINY, generated_queries=[["a"]] * 2,
                                   settings=GenIRTrainingSettings(pseudo_query_source="llm", show_progress=False))
    with pytest.raises(ValueError, match="pseudo_query_source"):
        GenIRTrainingSettings(pseudo_query_source="doc2query")


def test_generated_queries_feed_training(tiny_causal_lm_dir, tmp_path):
    ids, texts = corpus(5)
    out = generate_pseudo_queries(texts, tiny_causal_lm_dir, settings=FAST, cache_dir=tmp_path, show_progress=False)
    result = train_generative_retriever(texts, atomic_docids(ids), config=TINY, generated_queries=out.queries,
                                        settings=GenIRTrainingSettings(epochs=1, pseudo_query_source="llm",
                                                                       pseudo_queries=1, show_progress=False))
    assert result.examples_per_epoch == 5 + sum(len(q) for q in out.queries)


def test_cli_trains_on_llm_pseudo_queries(tiny_causal_lm_dir, tmp_path, capsys):
    from flagstone.cli import main
    from tests.genir.test_cli import TINY as TINY_ARGS
    from tests.genir.test_cli import make_corpus

    data = make_corpus(tmp_path / "mini", n=6)
    cache = tmp_path / "pq-cache"
    args = ["train", "genir", str(data), "--docids", "atomic", "--epochs", "1", "--pseudo-query-source", "llm",
            "--pseudo-queries", "2", "--query-generator", str(tiny_causal_lm_dir), "--query-cache", str(cache),
            *TINY_ARGS]
    assert main([*args, "-o", str(tmp_path / "model")]) == 0
    err = capsys.readouterr().err
    assert "12 replies" in err and "6 documents generated now" in err
    training = json.loads((tmp_path / "model" / "genir.json").read_text())["training"]
    assert training["settings"]["pseudo_query_source"] == "llm"
    assert training["query_generation"]["replies"] == 12 and len(list(cache.glob("*.jsonl"))) == 1
    assert main([*args, "-o", str(tmp_path / "model2")]) == 0  # the second run reads the cache
    assert "0 documents generated now" in capsys.readouterr().err


def test_cli_llm_pseudo_queries_need_at_least_one(tmp_path, capsys):
    from flagstone.cli import main
    from tests.genir.test_cli import make_corpus

    data = make_corpus(tmp_path / "mini", n=4)
    code = main(["train", "genir", str(data), "-o", str(tmp_path / "m"), "--pseudo-query-source", "llm",
                 "--pseudo-queries", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs --pseudo-queries of at least 1" in err and len(err.splitlines()) == 1


def test_llm_plus_spans_trains_on_both():
    ids, texts = corpus(4)
    generated = [["apple garden"], [], ["river window"], ["pencil castle", "rocket ladder"]]
    result = train_generative_retriever(texts, atomic_docids(ids), config=TINY, generated_queries=generated,
                                        settings=GenIRTrainingSettings(epochs=1, pseudo_query_source="llm+spans",
                                                                       pseudo_queries=2, show_progress=False))
    assert result.examples_per_epoch == 4 + 4 * 2 + 4  # documents, 2 spans each, every generated query
    assert result.retriever.training["generated_pseudo_queries"] == 4
