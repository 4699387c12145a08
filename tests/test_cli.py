from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flagstone.cli import COMMANDS, main
from tests.evaluation.test_beir import make_beir
from tests.helpers import REPO, build_tiny_causal_lm


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "flagstone", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_on_every_command(command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "usage: flagstone" in result.stdout and "--help" in result.stdout


@pytest.fixture
def mini(tmp_path):
    return make_beir(tmp_path / "mini")


@pytest.fixture
def cache_args(tmp_path):
    return ["--cache-dir", str(tmp_path / "cache"), "--quiet"]


def test_eval_prints_a_table_and_writes_json_and_runs(mini, tmp_path, capsys, cache_args):
    out_json, run_dir = tmp_path / "m.json", tmp_path / "runs"
    assert main(["eval", str(mini), "--k", "1", "10", "--output", str(out_json), "--run-dir", str(run_dir),
                 *cache_args]) == 0
    printed = capsys.readouterr().out
    assert "| dense |" in printed and "| bm25 |" in printed and "| hybrid |" in printed
    saved = json.loads(out_json.read_text())
    assert set(saved["modes"]) == {"dense", "bm25", "hybrid"}
    assert saved["modes"]["bm25"]["metrics"]["ndcg@10"] == 1.0
    lines = (run_dir / "mini.dense.trec").read_text().splitlines()
    assert lines[0].split()[1:4:2] == ["Q0", "1"] and len(lines) == 2 * 3
    # the second evaluation reads document embeddings from the cache
    shards = list((tmp_path / "cache").rglob("shard-*.npz"))
    assert len(shards) == 1
    assert main(["eval", str(mini), "--modes", "dense", *cache_args]) == 0
    assert list((tmp_path / "cache").rglob("shard-*.npz")) == shards


def test_search_and_encode(mini, tmp_path, capsys, cache_args):
    assert main(["search", str(mini), "-q", "neutron stars", "--mode", "bm25", "-k", "2", "--json",
                 *cache_args]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["hits"][0]["id"] == "d3" and "bm25" in row["hits"][0]
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\nsecond text\n")
    out = tmp_path / "emb.npz"
    assert main(["encode", str(texts), "-o", str(out), "--quiet"]) == 0
    with np.load(out) as data:
        assert data["dense"].shape == (2, 384) and list(data["ids"]) == ["1", "3"]


@pytest.mark.parametrize("args,message", [
    (["eval", "{tmp}/nowhere"], "argument data: folder not found"),
    (["search", "{tmp}/missing.jsonl", "-q", "x"], "argument corpus: not found"),
    (["search", "{tmp}/bad.jsonl", "-q", "x"], "bad.jsonl:2: malformed JSON"),
    (["search", "{tmp}/empty.txt", "-q", "x"], "no texts found"),
    (["search", "{tmp}/ok.txt", "-q", "x", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["search", "{tmp}/ok.txt", "-q", "  ", "--mode", "bm25"], "text #0 is empty"),
    (["search", "{tmp}/ok.txt", "-q", "x", "--mode", "sparse"], "cannot produce sparse"),
    (["search", "{tmp}/ok.txt", "-q", "x", "--weights", "dense"], "argument --weights: bad entry 'dense'"),
    (["encode", "{tmp}/ok.txt", "-o", "{tmp}/o.npz", "--colbert"], "no ColBERT head"),
    (["eval", "{tmp}/unknown-ids"], "document ids are not in corpus.jsonl"),
    (["search", "{tmp}/latin1.txt", "-q", "x", "--mode", "bm25"], "latin1.txt: not valid UTF-8"),
    (["search", "{tmp}/latin1.jsonl", "-q", "x", "--mode", "bm25"], "latin1.jsonl:2: not valid UTF-8"),
    (["encode", "{tmp}/long.txt", "-o", "{tmp}/o.npz", "--no-truncate"], "text #1 has"),
    (["encode", "{tmp}/ok.txt", "-o", "{tmp}"], "is a folder"),
    (["encode", "{tmp}/ok.txt", "-o", "{tmp}/ok.txt"], "already exists; pass --overwrite"),
    (["search", "{tmp}", "-q", "x"], "JSONL file not found"),
    (["eval"], "nothing to evaluate"),
    (["eval", "--tasks", "STSbenchmark"], "did you mean STSBenchmark"),
    (["eval", "--task-file", "{tmp}/task.json"], "task #0: task 'T': columns needs sentence2"),
    (["eval", "--task-file", "{tmp}/missing.json"], "argument --task-file: file not found"),
    (["eval", "{tmp}/unknown-ids", "--suite", "quick"], "not both"),
])
def test_user_mistakes_print_one_line_without_traceback(tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "ok.txt").write_text("one document\nanother document\n")
    make_beir(tmp_path / "unknown-ids", qrels="q1\tnope\t1\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n' + '{"text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "long.txt").write_text("short text\n" + "many words " * 400 + "\n")
    (tmp_path / "task.json").write_text(json.dumps({"name": "T", "type": "sts", "files": {"test": "a.csv"},
                                                    "columns": {"sentence1": 0}}))
    result = run_cli(*[a.format(tmp=tmp_path) for a in args], "--quiet")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("flagstone: error:") and message in last


def test_bad_numbers_are_argument_errors(tmp_path, capsys):
    (tmp_path / "ok.txt").write_text("one document\n")
    with pytest.raises(SystemExit) as exc:
        main(["search", str(tmp_path / "ok.txt"), "-q", "y", "-k", "0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("flagstone: error: argument -k: must be at least 1, got 0 "
                                       "(see flagstone search --help)\n")


def test_eval_every_mode_with_an_m3_model(mini, tiny_m3_dir, tmp_path, capsys, cache_args):
    out_json = tmp_path / "m3.json"
    assert main(["eval", str(mini), "--model", str(tiny_m3_dir), "--k", "10", "--output", str(out_json),
                 *cache_args]) == 0
    saved = json.loads(out_json.read_text())
    assert list(saved["modes"]) == ["dense", "sparse", "colbert", "bm25", "hybrid"]
    assert saved["settings"]["hybrid"]["weights"] == {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
    for mode in saved["modes"].values():
        assert 0.0 <= mode["metrics"]["ndcg@10"] <= 1.0


def test_encode_in_bfloat16_stays_close_to_float32(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("zinc shortens colds\nneutron stars are dense\n")
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        outputs[dtype] = tmp_path / f"{dtype}.npz"
        assert main(["encode", str(texts), "-o", str(outputs[dtype]), "--dtype", dtype, "--quiet"]) == 0
    with np.load(outputs["float32"]) as full, np.load(outputs["bfloat16"]) as half:
        cosine = np.sum(full["dense"] * half["dense"], axis=1)
        assert full["dense"].dtype == half["dense"].dtype == np.float32
        assert cosine.min() > 0.99


def test_index_build_search_describe(mini, tmp_path, capsys, cache_args):
    pytest.importorskip("faiss")
    folder = tmp_path / "idx"
    assert main(["index", "build", str(mini), "-o", str(folder), "--index", "hi2", *cache_args]) == 0
    assert (folder / "retriever.json").is_file() and (folder / "indexes" / "dense" / "CURRENT").is_file()
    assert (folder / "bm25.json").is_file()  # HI²'s query terms
    capsys.readouterr()
    assert main(["index", "search", str(folder), "-q", "neutron stars", "-k", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "d3:" in printed.splitlines()[2] and "documents scored" in printed
    assert main(["index", "search", str(folder), "-q", "neutron stars", "--mmap", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["index", "describe", str(folder)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["kind"] == "hi2" and described["documents"] == 3
    # rebuilding needs --overwrite; a folder that is not an index is never overwritten, even with it
    result = run_cli("index", "build", str(mini), "-o", str(folder), "--index", "flat", "--quiet")
    assert result.returncode == 2 and "--overwrite" in result.stderr and "Traceback" not in result.stderr
    assert main(["index", "build", str(mini), "-o", str(folder), "--index", "flat", "--overwrite", *cache_args]) == 0
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    result = run_cli("index", "build", str(mini), "-o", str(other), "--overwrite", "--quiet")
    assert result.returncode == 2 and "refusing to replace it" in result.stderr
    assert (other / "notes.txt").read_text() == "keep me"
    result = run_cli("index", "search", str(other), "-q", "x")
    assert result.returncode == 2 and "not a retriever folder" in result.stderr


def test_eval_with_an_approximate_index(mini, capsys, cache_args):
    pytest.importorskip("faiss")
    assert main(["eval", str(mini), "--modes", "dense", "--index", "ivf", *cache_args]) == 0
    assert "| dense |" in capsys.readouterr().out


def test_eval_compares_index_kinds_in_one_table(mini, capsys, cache_args):
    pytest.importorskip("faiss")
    assert main(["eval", str(mini), "--modes", "dense", "bm25", "--index", "flat", "hi2", "--k", "5", *cache_args]) == 0
    printed = capsys.readouterr().out
    assert "| dense[flat] |" in printed and "| dense[hi2] |" in printed and printed.count("| bm25 |") == 1
    assert "ndcg@5" in printed


def test_eval_runs_a_user_task_file_and_writes_mteb_results(tmp_path, capsys, cache_args):
    rows = [("A man plays a guitar.", "A person plays guitar.", 4.8), ("A man plays a guitar.", "Stocks fell.", 0.1),
            ("Dogs run in a park.", "Dogs are running.", 4.1), ("Dogs run in a park.", "The plane landed.", 0.3)]
    (tmp_path / "sts.csv").write_text("s1,s2,gold\n" + "".join(f"{a},{b},{g}\n" for a, b, g in rows))
    (tmp_path / "task.json").write_text(json.dumps({"name": "MySTS", "type": "sts", "files": {"test": "sts.csv"},
                                                    "columns": {"sentence1": "s1", "sentence2": "s2", "score": "gold"}}))
    assert main(["eval", "--task-file", str(tmp_path / "task.json"), "--output-dir", str(tmp_path / "out"),
                 *cache_args]) == 0
    out = capsys.readouterr().out
    assert "| MySTS | sts | cosine_spearman |" in out
    result = json.loads((tmp_path / "out" / "MySTS.json").read_text())
    assert result["scores"]["test"][0]["main_score"] == pytest.approx(1.0)  # 4 pairs ranked exactly right
    assert main(["eval", "--list-tasks"]) == 0
    assert "suite default:" in capsys.readouterr().out


def test_search_reranks_with_a_cross_encoder(tiny_cross_encoder_dir, tmp_path, capsys, cache_args):
    from flagstone.models.reranker import CrossEncoderReranker

    docs = ["open a file for reading", "close the file", "the absolute value", "read bytes from a stream"]
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    assert main(["search", str(tmp_path / "docs.txt"), "-q", "open file", "--mode", "bm25", "-k", "2",
                 "--rerank", str(tiny_cross_encoder_dir), "--json", *cache_args]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["mode"] == "bm25+rerank" and len(row["hits"]) == 2
    # the two shown are the cross-encoder's best among the BM25 candidates, with its scores
    reranker = CrossEncoderReranker(tiny_cross_encoder_dir)
    bm25_candidates = [d for d in docs if {"open", "file"} & set(d.split())]
    scores = dict(zip(bm25_candidates, reranker.score_pairs([("open file", d) for d in bm25_candidates])))
    best = sorted(scores, key=scores.get, reverse=True)[:2]
    assert [docs[int(h["id"]) - 1] for h in row["hits"]] == best  # ids of a .txt file are line numbers
    assert row["hits"][0]["rerank"] == pytest.approx(scores[best[0]], abs=1e-5)


def test_mine_train_and_merge_from_the_command_line(tiny_m3_dir, tmp_path, capsys):
    from flagstone.corpora import python_docstrings
    from flagstone.training.data import TrainingExample, load_examples, save_examples

    _, texts = python_docstrings(80)
    save_examples([TrainingExample(t[:40], [t]) for t in texts[:12]], tmp_path / "train.jsonl")
    (tmp_path / "corpus.txt").write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")
    assert main(["mine", str(tmp_path / "train.jsonl"), "-o", str(tmp_path / "mined.jsonl"), "--corpus",
                 str(tmp_path / "corpus.txt"), "--mode", "bm25", "--range", "1", "20", "--negatives", "3",
                 "--quiet"]) == 0
    mined = load_examples(tmp_path / "mined.jsonl")
    assert len(mined) == 12 and all(len(ex.neg) == 3 and ex.pos[0] not in ex.neg for ex in mined)

    common = ["--model", str(tiny_m3_dir), "--max-steps", "2", "--batch-size", "4", "--group-size", "3",
              "--max-length", "48", "--quiet"]
    assert main(["train", "embedder", str(tmp_path / "mined.jsonl"), "-o", str(tmp_path / "emb"),
                 "--heads", "dense", "sparse", *common]) == 0
    assert "2 steps" in capsys.readouterr().out
    assert (tmp_path / "emb" / "sparse_linear.pt").is_file()
    beir = make_beir(tmp_path / "beir")
    (beir / "qrels" / "test.tsv").rename(beir / "qrels" / "dev.tsv")
    assert main(["train", "embedder", str(tmp_path / "mined.jsonl"), "-o", str(tmp_path / "validated"),
                 "--heads", "dense", "sparse", "--validate", str(beir), "--validate-every", "1", *common]) == 0
    out = capsys.readouterr().out
    history = json.loads(out[out.index("{"): out.rindex("}") + 1])["validation"]
    assert [row["step"] for row in history] == [1, 2]
    assert {"dense_ndcg@10", "sparse_ndcg@10", "hybrid_ndcg@10"} <= set(history[0])
    assert main(["train", "reranker", str(tmp_path / "mined.jsonl"), "-o", str(tmp_path / "ce"), *common]) == 0
    assert (tmp_path / "ce" / "config.json").is_file()
    capsys.readouterr()

    assert main(["merge", str(tiny_m3_dir), str(tmp_path / "emb"), "-o", str(tmp_path / "merged"),
                 "--weights", "1", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["weights"].values()) == [0.5, 0.5]
    assert main(["merge", str(tiny_m3_dir), str(tmp_path / "emb"), "-o", str(tmp_path / "merged2"),
                 "--examples", str(tmp_path / "mined.jsonl"), "--temperature", "1"]) == 0
    weights = list(json.loads(capsys.readouterr().out)["weights"].values())
    assert sum(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("args, message", [
    (["train"], "choose what to train"),
    (["train", "embedder", "{tmp}/nope.jsonl", "-o", "{tmp}/o"], "argument data: file not found"),
    (["train", "reranker", "{tmp}/noneg.jsonl", "-o", "{tmp}/o"], "has no negatives: mine hard negatives first"),
    (["mine", "{tmp}/badrow.jsonl", "-o", "{tmp}/o.jsonl"], "badrow.jsonl:1: 'pos' must be a list of strings"),
    (["mine", "{tmp}/badrow.jsonl", "-o", "{tmp}/noneg.jsonl"], "already exists; pass --overwrite"),
    (["merge", "{tmp}/a", "{tmp}/b", "-o", "{tmp}/m", "--weights", "1", "1"], "unknown model"),
])
def test_training_mistakes_print_one_line(tmp_path, args, message):
    (tmp_path / "noneg.jsonl").write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n")
    (tmp_path / "badrow.jsonl").write_text(json.dumps({"query": "q", "pos": [1]}) + "\n")
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


ASK_CONTEXT = "The Velmora bridge opened in 1932. It crosses the river Aune.\n\nMayor Ilse Brandt ordered it built.\n"


@pytest.mark.parametrize("args, message", [
    (["ask", "When?"], "needs --context"),
    (["ask", "When?", "--context", "{tmp}/missing.txt"], "not found"),
    (["ask", "When?", "--context", "{tmp}/ctx.txt", "--context", "{tmp}/ctx.txt", "--mode", "bm25"], "share an id"),
    (["ask", "When?", "--context", "{tmp}/ctx.txt", "--generator", "{tmp}/no-model"], "unknown causal LM"),
    (["ask", "When?", "--pipeline", "no_retrieval", "--base-url", "http://127.0.0.1:9/v1", "--generator", "m"],
     "cannot reach --base-url http://127.0.0.1:9/v1"),
])
def test_ask_mistakes_print_one_line(tmp_path, args, message):
    (tmp_path / "ctx.txt").write_text(ASK_CONTEXT)
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_ask_rag_json_trace_with_a_local_model(tiny_causal_lm_dir, tmp_path):
    (tmp_path / "ctx.txt").write_text(ASK_CONTEXT)
    result = run_cli("ask", "When did the Velmora bridge open?", "--context", str(tmp_path / "ctx.txt"),
                     "--generator", str(tiny_causal_lm_dir), "--mode", "bm25", "--max-new-tokens", "4", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pipeline"] == "rag" and isinstance(data["answer"], str)
    assert data["trace"]["retrieved"] == ["ctx.txt#0"]
    assert [s["name"] for s in data["trace"]["steps"]] == ["search", "answer"]
    assert data["trace"]["completion_tokens"] >= 1


def test_ask_memorag_reads_the_context_whole_and_writes_clues_in_int8(tmp_path):
    tiny_lm = build_tiny_causal_lm(tmp_path / "lm", chat_template=True, context=2048)  # the context fits its window
    (tmp_path / "ctx.txt").write_text(ASK_CONTEXT)
    result = run_cli("ask", "Who ordered the bridge?", "--pipeline", "memorag", "--mode", "bm25", "--context",
                     str(tmp_path / "ctx.txt"), "--generator", str(tiny_lm), "--max-new-tokens", "4",
                     "--int8-clues", "--json", "--memory", str(tmp_path / "memory"))
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["trace"]["steps"]
    assert [s["name"] for s in steps] == ["clues", "search", "answer"]  # the context fits: no gists
    assert "in int8 to write the clues" in result.stderr
    saved = json.loads((tmp_path / "memory" / "memory.json").read_text())
    assert saved["settings"]["memory"].startswith("context, read whole by")
    assert saved["gists"] == [" ".join(ASK_CONTEXT.split())]  # one chunk: the context itself


@pytest.mark.slow
def test_ask_memorag_saves_and_reuses_its_memory(tmp_path):
    # the memory's saving and reuse are under test, not the words: a tiny random Llama writes them in seconds
    tiny_lm = build_tiny_causal_lm(tmp_path / "lm", chat_template=True, context=2048)
    (tmp_path / "ctx.txt").write_text(ASK_CONTEXT)
    memory = tmp_path / "memory"
    args = ["ask", "Who ordered the bridge?", "--pipeline", "memorag", "--mode", "bm25", "--memory", str(memory),
            "--max-new-tokens", "8", "--json", "--generator", str(tiny_lm), "--memory-kind", "gists"]
    first = run_cli(*args, "--context", str(tmp_path / "ctx.txt"))
    assert first.returncode == 0, first.stderr
    assert (memory / "memory.json").is_file() and (memory / "context.json").is_file()
    second = run_cli(*args)  # no --context: everything comes from the memory folder
    assert second.returncode == 0, second.stderr
    names = [[s["name"] for s in json.loads(r.stdout)["trace"]["steps"]] for r in (first, second)]
    assert names[0][0] == "gist" and "gist" not in names[1]
    assert names[1][0] == "clues"
    # the first question filled the clue prompt's key-value cache and saved it; the second process read it
    assert (memory / "memory_kv.safetensors").is_file()
    clues = [next(s for s in json.loads(r.stdout)["trace"]["steps"] if s["name"] == "clues") for r in (first, second)]
    assert clues[0]["cached_tokens"] == 0 and clues[1]["cached_tokens"] > 0 and clues[1]["cache_miss"] == ""
    assert clues[0]["output"] == clues[1]["output"]  # the same greedy reply with the cache
