"""`flagstone ask --trace` prints each step: search queries with the chunks they found, the chosen actions and
how they were chosen (policy, scored, free text), condensed notes and unparsed replies (a scripted generator
stands in for the model, so each line is known)."""
from __future__ import annotations

import pytest

from flagstone.cli import main
from tests.rag.test_pipelines import ScriptedGenerator

CONTEXT = "The Velmora bridge opened in 1932. It crosses the river Aune.\n\nMayor Ilse Brandt ordered it built.\n"


@pytest.fixture
def ask(tiny_causal_lm_dir, tmp_path, monkeypatch):
    (tmp_path / "ctx.txt").write_text(CONTEXT)

    def run(replies, *options: str, question: str = "When did the Velmora bridge open?") -> int:
        scripted = ScriptedGenerator(replies)
        monkeypatch.setattr("flagstone.models.generator.load_generator", lambda *a, **kw: scripted)
        return main(["ask", question, "--context", str(tmp_path / "ctx.txt"),
                     "--generator", str(tiny_causal_lm_dir), "--mode", "bm25", "-k", "1", "--quiet", *options])

    return run


def test_trace_shows_searches_actions_notes_and_unparsed_replies(ask, capsys):
    replies = ["Velmora bridge opened", "It opened in 1932.", "So 1932.", "maybe", "Hmm.", " answer", "1932}"]
    assert ask(replies, "--pipeline", "search_o1", "--trace") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1932"
    search = next(line for line in lines if line.startswith("  [search]"))
    assert "query 'Velmora bridge opened' -> ctx.txt#0" in search
    assert "  action [decide] search 'Velmora bridge opened' (policy: first decision searches " \
           "(first_search='forced'))" in lines
    assert "  action [decide] UNPARSED reply 'maybe' (free_text)" in lines
    assert "  action [decide] answer (free_text)" in lines
    assert any(line.startswith("  [decide] (") and "chose [decide] UNPARSED" in line for line in lines)
    assert "  note: condensed: It opened in 1932." in lines
    assert lines[-1].endswith(", 1 searches, 1 unparsed actions")


def test_first_query_question_searches_the_question_itself(ask, capsys):
    replies = ["It opened in 1932.", "So 1932.", " answer", "1932}"]  # no query is generated
    assert ask(replies, "--pipeline", "search_o1", "--first-query", "question", "--trace") == 0
    lines = capsys.readouterr().out.splitlines()
    search = next(line for line in lines if line.startswith("  [search]"))
    assert "query 'When did the Velmora bridge open?' -> ctx.txt#0" in search
    assert lines[0] == "1932"


def test_trace_shows_the_evidence_check_unless_switched_off(ask, capsys):
    replies = ["Velmora bridge opened", "It opened in 1932.", "So 1932.", " answer", "1932}"]
    question = "When did the Velmora bridge over the Loire open?"  # the chunk read never mentions the Loire
    assert ask(replies, "--pipeline", "search_o1", "--trace", question=question) == 0
    assert "  action [decide] answer (free_text; evidence check: not mentioned: Loire)" in \
        capsys.readouterr().out.splitlines()
    assert ask(replies, "--pipeline", "search_o1", "--trace", "--no-evidence-check", question=question) == 0
    assert "evidence check" not in capsys.readouterr().out


def test_without_trace_only_the_answer(ask, capsys):
    assert ask(["Velmora bridge opened", "It opened in 1932.", "So 1932.", " answer", "1932}"],
               "--pipeline", "search_o1") == 0
    assert capsys.readouterr().out == "1932\n"


def test_guided_needs_a_server(ask, capsys):
    assert ask([], "--guided", "vllm") == 2
    assert "--guided is a server option" in capsys.readouterr().err
