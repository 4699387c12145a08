"""Every command, fed a table of user mistakes: exit code 2, exactly one line on stderr, no traceback, and
no model loaded (the mistake is found before any heavy work)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.test_beir import make_beir
from tests.helpers import REPO

# main() in a fresh interpreter; afterwards a line on stderr names torch/transformers if they were imported,
# which would mean a model started loading before the mistake was found
RUNNER = """
import sys
from flagstone.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
if heavy:
    print("heavy modules imported: " + ", ".join(heavy), file=sys.stderr)
sys.exit(code)
"""

BAD = [
    # (case id, arguments, a part of the one-line message)
    ("unknown-command", ["nosuch"], "invalid choice"),
    ("unknown-option", ["--bogus"], "unrecognized arguments"),
    ("demo-docs-zero", ["demo", "--docs", "0"], "must be at least 1"),
    ("demo-docs-negative", ["demo", "--docs", "-5"], "must be at least 1"),
    ("demo-k-not-int", ["demo", "-k", "abc"], "not an integer"),
    ("demo-batch-size-zero", ["demo", "--batch-size", "0"], "must be at least 1"),
    ("demo-unknown-model", ["demo", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    ("models-extra-argument", ["models", "extra"], "unrecognized arguments"),
    ("encode-missing-input", ["encode", "{tmp}/missing.txt", "-o", "{tmp}/o.npz"], "not found"),
    ("encode-output-exists", ["encode", "{tmp}/ok.txt", "-o", "{tmp}/ok.txt"], "pass --overwrite"),
    ("encode-output-folder", ["encode", "{tmp}/ok.txt", "-o", "{tmp}"], "is a folder"),
    ("encode-output-under-file", ["encode", "{tmp}/ok.txt", "-o", "{tmp}/ok.txt/o.npz"], "is a file"),
    ("encode-max-length-zero", ["encode", "{tmp}/ok.txt", "-o", "{tmp}/o.npz", "--max-length", "0"],
     "must be at least 1"),
    ("encode-model-folder-without-config", ["encode", "{tmp}/ok.txt", "-o", "{tmp}/o.npz", "--model", "{tmp}/beir"],
     "no config.json"),
    ("search-unknown-mode", ["search", "{tmp}/ok.txt", "-q", "x", "--mode", "nosuch"], "invalid choice"),
    ("search-zero-weights", ["search", "{tmp}/ok.txt", "-q", "x", "--weights", "dense=0,bm25=0"], "all zero"),
    ("search-negative-weight", ["search", "{tmp}/ok.txt", "-q", "x", "--weights", "dense=-1,bm25=1"], "negative"),
    ("search-malformed-weights", ["search", "{tmp}/ok.txt", "-q", "x", "--weights", "dense=abc"], "SIGNAL=NUMBER"),
    ("search-unknown-signal", ["search", "{tmp}/ok.txt", "-q", "x", "--weights", "dnese=1"], "unknown signal"),
    ("search-first-stage-weight", ["search", "{tmp}/ok.txt", "-q", "x", "--first-stage-weight", "1.5"],
     "between 0 and 1"),
    ("search-rerank-depth-zero", ["search", "{tmp}/ok.txt", "-q", "x", "--rerank-depth", "0"], "must be at least 1"),
    ("search-missing-corpus", ["search", "{tmp}/missing", "-q", "x"], "not found"),
    ("search-unknown-reranker", ["search", "{tmp}/ok.txt", "-q", "x", "--rerank", "no-such-reranker"],
     "unknown model"),
    ("eval-unknown-mode", ["eval", "{tmp}/beir", "--modes", "dense", "nosuch"], "invalid choice"),
    ("eval-k-zero", ["eval", "{tmp}/beir", "--k", "10", "0"], "must be at least 1"),
    ("eval-missing-data", ["eval", "{tmp}/missing"], "not found"),
    ("eval-data-is-file", ["eval", "{tmp}/ok.txt"], "not a folder"),
    ("eval-unknown-suite", ["eval", "--suite", "nosuch"], "invalid choice"),
    ("eval-missing-task-file", ["eval", "--task-file", "{tmp}/missing.json"], "not found"),
    ("eval-output-is-folder", ["eval", "{tmp}/beir", "--output", "{tmp}"], "is a folder"),
    ("eval-run-dir-is-file", ["eval", "{tmp}/beir", "--run-dir", "{tmp}/ok.txt"], "is a file"),
    ("eval-sts-gold-not-a-number", ["eval", "--task-file", "{tmp}/sts_bad.json", "--model", "{tmp}/broken-model"],
     "not a number"),
    ("eval-sts-gold-out-of-range", ["eval", "--task-file", "{tmp}/sts_range.json", "--model", "{tmp}/broken-model"],
     "outside the declared range"),
    ("eval-positional-columns-need-header-flag", ["eval", "--task-file", "{tmp}/clf_positions.json"], "header"),
    ("index-build-output-is-file", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/ok.txt"], "not a folder"),
    ("index-build-n-lists-zero", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--n-lists", "0"],
     "must be at least 1"),
    ("index-build-terms-zero", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--terms-per-doc", "0"],
     "must be at least 1"),
    ("index-build-missing-corpus", ["index", "build", "{tmp}/missing.txt", "-o", "{tmp}/idx"], "not found"),
    ("index-build-n-probe-zero", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--n-probe", "0"],
     "must be at least 1"),
    ("index-build-target-recall-above-one", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--target-recall",
                                             "1.5"], "in (0, 1]"),
    ("index-build-target-recall-zero", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--target-recall", "0"],
     "in (0, 1]"),
    ("index-build-target-recall-and-n-probe", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--n-probe", "4",
                                               "--target-recall", "0.9"], "not allowed with"),
    ("index-build-n-probe-on-flat", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--index", "flat",
                                     "--n-probe", "4"], "apply to --index ivf or hi2"),
    ("index-build-refine-on-flat-codec", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--refine", "2"],
     "use it with --codec pq or fp16"),
    ("index-build-refine-zero", ["index", "build", "{tmp}/ok.txt", "-o", "{tmp}/idx", "--codec", "pq", "--refine",
                                 "0"], "must be at least 1"),
    ("index-search-target-recall-not-a-number", ["index", "search", "{tmp}/beir", "-q", "x", "--target-recall",
                                                 "high"], "not a number"),
    ("eval-target-recall-above-one", ["eval", "{tmp}/beir", "--index", "ivf", "--target-recall", "2"], "in (0, 1]"),
    ("eval-n-probe-on-flat", ["eval", "{tmp}/beir", "--n-probe", "8"], "apply to --index ivf or hi2"),
    ("index-search-missing-folder", ["index", "search", "{tmp}/missing", "-q", "x"], "not found"),
    ("index-search-file-not-folder", ["index", "search", "{tmp}/ok.txt", "-q", "x"], "not a folder"),
    ("index-search-k-zero", ["index", "search", "{tmp}/beir", "-q", "x", "-k", "0"], "must be at least 1"),
    ("index-describe-missing-folder", ["index", "describe", "{tmp}/missing"], "not found"),
    ("index-verify-missing-folder", ["index", "verify", "{tmp}/missing"], "not found"),
    ("index-verify-not-an-index", ["index", "verify", "{tmp}/beir"], "not a retriever folder"),
    ("data-no-action", ["data"], "choose an action"),
    ("data-carve-no-such-split", ["data", "carve-split", "{tmp}/beir", "-o", "{tmp}/dev", "--seed", "0", "--count", "1"],
     "no qrels for split 'train'"),
    ("data-carve-too-many", ["data", "carve-split", "{tmp}/beir", "-o", "{tmp}/dev", "--seed", "0", "--count", "5",
                             "--from", "test"], "cannot carve 5 of 2 queries"),
    ("data-carve-into-source", ["data", "carve-split", "{tmp}/beir", "-o", "{tmp}/beir", "--seed", "0", "--count",
                                "1", "--from", "test"], "outside the source folder"),
    ("data-carve-bad-fraction", ["data", "carve-split", "{tmp}/beir", "-o", "{tmp}/dev", "--seed", "0", "--fraction",
                                 "1.5", "--from", "test"], "must be between 0 and 1"),
    ("data-carve-output-is-file", ["data", "carve-split", "{tmp}/beir", "-o", "{tmp}/ok.txt", "--seed", "0", "--count",
                                   "1", "--from", "test"], "ok.txt"),
    ("train-output-is-users-folder", ["train", "embedder", "{tmp}/ok.txt", "-o", "{tmp}/beir", "--overwrite"],
     "not written by Flagstone"),
    ("merge-model-not-a-model", ["merge", "{tmp}/beir", "{tmp}/beir", "--weights", "1", "1", "-o", "{tmp}/m"],
     "not a model folder"),
    ("mine-missing-data", ["mine", "{tmp}/missing.jsonl", "-o", "{tmp}/o.jsonl"], "not found"),
    ("mine-negatives-zero", ["mine", "{tmp}/train.jsonl", "-o", "{tmp}/o.jsonl", "--negatives", "0"],
     "must be at least 1"),
    ("mine-unknown-mode", ["mine", "{tmp}/train.jsonl", "-o", "{tmp}/o.jsonl", "--mode", "colbert"],
     "invalid choice"),
    ("mine-range-reversed", ["mine", "{tmp}/train.jsonl", "-o", "{tmp}/o.jsonl", "--range", "100", "10"],
     "--range"),
    ("mine-unknown-teacher", ["mine", "{tmp}/train.jsonl", "-o", "{tmp}/o.jsonl", "--teacher", "no-such-model"],
     "unknown model"),
    ("train-output-is-file", ["train", "embedder", "{tmp}/train.jsonl", "-o", "{tmp}/ok.txt"], "is a file"),
    ("train-epochs-zero", ["train", "embedder", "{tmp}/train.jsonl", "-o", "{tmp}/out", "--epochs", "0"],
     "must be at least 1"),
    ("train-learning-rate-negative", ["train", "embedder", "{tmp}/train.jsonl", "-o", "{tmp}/out",
                                      "--learning-rate", "-1"], "must be greater than 0"),
    ("train-temperature-zero", ["train", "embedder", "{tmp}/train.jsonl", "-o", "{tmp}/out", "--temperature", "0"],
     "must be greater than 0"),
    ("train-unknown-model", ["train", "embedder", "{tmp}/train.jsonl", "-o", "{tmp}/out", "--model", "nosuch"],
     "unknown model"),
    ("train-missing-validate", ["train", "embedder", "{tmp}/train.jsonl", "-o", "{tmp}/out",
                                "--validate", "{tmp}/missing"], "not found"),
    ("train-reranker-group-size-zero", ["train", "reranker", "{tmp}/train.jsonl", "-o", "{tmp}/out",
                                        "--group-size", "0"], "must be at least 1"),
    ("train-reranker-missing-data", ["train", "reranker", "{tmp}/missing.jsonl", "-o", "{tmp}/out"], "not found"),
    ("train-inters-not-inters-rows", ["train", "inters", "{tmp}/train.jsonl", "-o", "{tmp}/out"], "missing field"),
    ("train-inters-folder-without-rows", ["train", "inters", "{tmp}/beir", "-o", "{tmp}/out"], "no train.jsonl"),
    ("train-inters-rank-zero", ["train", "inters", "{tmp}/train.jsonl", "-o", "{tmp}/out", "--rank", "0"],
     "must be at least 1"),
    ("inters-data-unknown-task", ["inters-data", "-o", "{tmp}/d", "--data-root", "{tmp}", "--tasks", "nosuch"],
     "unknown task"),
    ("inters-data-missing-root", ["inters-data", "-o", "{tmp}/d", "--data-root", "{tmp}/missing"], "not found"),
    ("inters-data-output-exists", ["inters-data", "-o", "{tmp}/beir", "--data-root", "{tmp}"], "--overwrite"),
    ("merge-zero-weights", ["merge", "{tmp}/m1", "{tmp}/m2", "-o", "{tmp}/merged", "--weights", "0", "0"],
     "all zero"),
    ("merge-weight-count", ["merge", "{tmp}/m1", "{tmp}/m2", "-o", "{tmp}/merged", "--weights", "1"],
     "one weight per model"),
    ("merge-one-model", ["merge", "{tmp}/m1", "-o", "{tmp}/merged", "--weights", "1"], "at least two"),
    ("merge-missing-model", ["merge", "{tmp}/m1", "{tmp}/missing", "-o", "{tmp}/merged", "--weights", "1", "1"],
     "unknown model"),
    ("merge-temperature-zero", ["merge", "{tmp}/m1", "{tmp}/m2", "-o", "{tmp}/merged", "--examples",
                                "{tmp}/train.jsonl", "--temperature", "0"], "must be greater than 0"),
    ("merge-output-is-file", ["merge", "{tmp}/m1", "{tmp}/m2", "-o", "{tmp}/ok.txt", "--weights", "1", "1"],
     "is a file"),
    ("ask-unknown-mode", ["ask", "q", "--context", "{tmp}/ctx.txt", "--mode", "nosuch"], "invalid choice"),
    ("ask-unreachable-base-url", ["ask", "q", "--pipeline", "no_retrieval", "--base-url", "http://127.0.0.1:9/v1",
                                  "--generator", "m"], "cannot reach"),
    ("ask-base-url-not-http", ["ask", "q", "--pipeline", "no_retrieval", "--base-url", "ftp://example.org/v1",
                               "--generator", "m"], "http:// or https://"),
    ("ask-missing-context", ["ask", "q", "--context", "{tmp}/missing.txt"], "not found"),
    ("ask-k-zero", ["ask", "q", "--context", "{tmp}/ctx.txt", "-k", "0"], "must be at least 1"),
    ("ask-overlap-negative", ["ask", "q", "--context", "{tmp}/ctx.txt", "--overlap", "-1"], "must be at least 0"),
    ("ask-overlap-too-large", ["ask", "q", "--context", "{tmp}/ctx.txt", "--chunk-tokens", "50", "--overlap", "50"],
     "--overlap"),
    ("ask-unknown-generator", ["ask", "q", "--context", "{tmp}/ctx.txt", "--generator", "{tmp}/no-model"],
     "unknown causal LM"),
    ("ask-unknown-embedder", ["ask", "q", "--context", "{tmp}/ctx.txt", "--model", "no-such-model"],
     "unknown model"),
    ("ask-memory-is-file", ["ask", "q", "--memory", "{tmp}/ok.txt"], "is a file"),
    ("ask-memory-kind-without-memorag", ["ask", "q", "--context", "{tmp}/ctx.txt", "--memory-kind", "gists"],
     "MemoRAG options"),
    ("ask-int8-clues-with-base-url", ["ask", "q", "--context", "{tmp}/ctx.txt", "--pipeline", "memorag",
                                      "--int8-clues", "--base-url", "http://127.0.0.1:9/v1"], "cannot be used"),
    ("ask-first-query-without-search-o1", ["ask", "q", "--context", "{tmp}/ctx.txt", "--first-query", "question"],
     "Search-o1 option"),
    ("ask-evidence-check-without-search-o1", ["ask", "q", "--context", "{tmp}/ctx.txt", "--no-evidence-check"],
     "Search-o1 option"),
    ("ask-memory-kind-unknown", ["ask", "q", "--pipeline", "memorag", "--memory-kind", "notes"], "invalid choice"),
    ("serve-port-too-large", ["serve", "--port", "80000"], "between 1 and 65535"),
    ("serve-port-zero", ["serve", "--port", "0"], "between 1 and 65535"),
    ("serve-port-not-int", ["serve", "--port", "abc"], "not an integer"),
    ("serve-max-texts-zero", ["serve", "--max-texts", "0"], "must be at least 1"),
    ("serve-max-body-zero", ["serve", "--max-body-mb", "0"], "must be greater than 0"),
    ("serve-max-wait-negative", ["serve", "--max-wait-ms", "-1"], "must be at least 0"),
    ("serve-threads-zero", ["serve", "--threads", "0"], "must be at least 1"),
    ("serve-missing-api-keys-file", ["serve", "--api-keys-file", "{tmp}/missing"], "not found"),
    ("serve-data-dir-is-file", ["serve", "--data-dir", "{tmp}/ok.txt"], "is a file"),
    ("serve-unknown-model", ["serve", "--model", "no-such-model"], "unknown model"),
    ("serve-generator-url-not-http", ["serve", "--generator-base-url", "localhost:8080"], "http:// or https://"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "ok.txt").write_text("one document\nanother document\n")
    (tmp / "ctx.txt").write_text("The bridge opened in 1932.\n")
    make_beir(tmp / "beir")
    (tmp / "train.jsonl").write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n"]}) + "\n")
    for name in ("m1", "m2", "broken-model"):  # folders that look like models; loading one would fail
        (tmp / name).mkdir()
        (tmp / name / "config.json").write_text("{}")
    (tmp / "sts_bad.csv").write_text("sentence1,sentence2,score\nA cat sits.,A cat is sitting.,4.5\n"
                                     "A man runs.,A dog barks.,oops\n")
    (tmp / "sts_range.csv").write_text("sentence1,sentence2,score\nA cat sits.,A cat is sitting.,7.5\n")
    (tmp / "clf.csv").write_text("hello there,greeting\nbye now,farewell\n")
    for name, table in (("sts_bad", "sts_bad.csv"), ("sts_range", "sts_range.csv")):
        (tmp / f"{name}.json").write_text(json.dumps({
            "name": name, "type": "sts", "files": {"test": table},
            "columns": {"sentence1": "sentence1", "sentence2": "sentence2", "score": "score"}}))
    (tmp / "clf_positions.json").write_text(json.dumps({
        "name": "clf", "type": "classification", "files": {"train": "clf.csv", "test": "clf.csv"},
        "columns": {"text": 0, "label": 1}}))
    return tmp


@pytest.mark.parametrize("args, message", [pytest.param(a, m, id=i) for i, a, m in BAD])
def test_a_user_mistake_exits_2_with_one_line(files, args, message):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    argv = [a.format(tmp=files) for a in args]
    result = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True, env=env,
                            cwd=files, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flagstone: error: ") and message in lines[0], lines[0]


def test_the_table_covers_every_command():
    from flagstone.cli import COMMANDS

    covered = {args[0] for _, args, _ in BAD}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered
    assert {args[1] for _, args, _ in BAD if args[0] == "index"} == {"build", "search", "describe", "verify"}
    assert {args[1] for _, args, _ in BAD if args[0] == "train"} == {"embedder", "reranker", "inters"}
