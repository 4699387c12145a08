"""The decision replay (benchmarks/search_o1_decision_replay.py) scores the evidence line that Search-o1 itself
shows, and every tried wording is computed from the chunks read, never from the gold facts."""
from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_names_wording_is_the_pipelines_line_and_fires_only_on_unread_names(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import search_o1_decision_replay as replay

    from flagstone.rag.search_o1 import NOT_MENTIONED
    from flagstone.retrieval.lexical import LexicalTokenizer

    terms = LexicalTokenizer()
    question = "Which river did the Velmora bridge cross in 1932?"
    read = set(terms("The Velmora bridge opened in 1932."))
    lines = replay.wordings(question, read, terms)
    assert lines["none"] == ("", False)
    assert lines["names"] == ("", False)  # every name read: the pipeline adds nothing
    assert lines["words"] == (NOT_MENTIONED.format(names="river, cross"), True)
    assert lines["coverage_count"][0].endswith("all but 2 of the question's words.)")
    unread = replay.wordings("Did the Aune flood Velmora?", read, terms)
    assert unread["names"] == (NOT_MENTIONED.format(names="Aune"), True)
    assert set(lines) == set(unread) == {"none", "names", "names_or_all", "words", "words_bracketed", "coverage_count"}
