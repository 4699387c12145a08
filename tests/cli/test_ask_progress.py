"""`flagstone ask` shows progress on stderr and, with --stream, the answer step's reply on stdout as the
local generator writes it (the real LocalGenerator on the tiny random Llama)."""
from __future__ import annotations

import io
import json

import pytest

from flagstone.cli import main
from flagstone.cli.rag import AskListener

CONTEXT = "The Velmora bridge opened in 1932. It crosses the river Aune.\n\nMayor Ilse Brandt ordered it built.\n"


@pytest.fixture
def ask(tiny_causal_lm_dir, tmp_path):
    (tmp_path / "ctx.txt").write_text(CONTEXT)

    def run(*options: str) -> int:
        return main(["ask", "When did the Velmora bridge open?", "--context", str(tmp_path / "ctx.txt"),
                     "--generator", str(tiny_causal_lm_dir), "--mode", "bm25", "--max-new-tokens", "6", *options])

    return run


def test_stream_prints_the_reply_as_it_comes_and_progress_goes_to_stderr(ask, capsys):
    assert ask("--json") == 0
    data = json.loads(capsys.readouterr().out)
    reply = next(s["output"] for s in data["trace"]["steps"] if s["name"] == "answer")

    assert ask("--stream") == 0
    out, err = capsys.readouterr()
    assert out == reply.lstrip() + "\n"  # the reply, streamed, once: not repeated after it
    lines = [line.split("] ", 1)[1] for line in err.splitlines()]  # "[   0.1 s] what" -> "what"
    assert lines[0].startswith("loading generator ") and lines[-1].startswith("done: ")
    assert lines[1:-1] == ["indexing 1 document(s) for bm25 retrieval", "retrieving: search", "generating: answer"]

    assert ask("--no-stream", "--quiet") == 0
    out, err = capsys.readouterr()
    assert out == data["answer"] + "\n" and err == ""


def test_stream_without_a_terminal_is_off_by_default_and_conflicts_are_errors(ask, capsys):
    assert ask("--quiet") == 0  # captured stdout is not a terminal: the cleaned answer alone
    plain = capsys.readouterr().out
    assert ask("--stream", "--json") == 2
    assert "choose one" in capsys.readouterr().err
    assert main(["ask", "When?", "--pipeline", "no_retrieval", "--base-url", "http://127.0.0.1:9/v1",
                 "--generator", "m", "--stream", "--quiet"]) == 2
    assert "--stream needs a local generator" in capsys.readouterr().err
    assert plain.endswith("\n") and plain.count("\n") == 1


def test_listener_prints_the_answer_when_the_streamed_reply_is_not_it():
    out, err = io.StringIO(), io.StringIO()
    listener = AskListener(progress=True, stream=True, out=out, err=err)
    listener.step_started("generate", "answer")
    listener.text_sink("answer")(" Answer: 1932.")
    listener.step_finished(None)
    assert out.getvalue() == "Answer: 1932.\n" and listener.shown("1932")  # the cleaned reply is the answer
    assert not listener.shown("1871")  # e.g. LC-Boost answered from a step that was not streamed
    assert listener.text_sink("gist") is None and "generating: answer" in err.getvalue()
