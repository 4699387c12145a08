"""The README is tested: every `flagstone ...` command and every Python block in it runs, in README order.

Commands run as the README shows them, in one working folder whose ``../shared/data`` is a small slice of the
real shared data (so a full-corpus command finishes in seconds). The files the README assumes the reader has
(corpus.jsonl, texts.txt, essay.txt, train.jsonl, few.jsonl, my_task.json with its pairs.csv) are written
from the same real data first. Where a command cannot run as written here (a hub download, a server on a
fixed port, hours of training) the test substitutes one piece of text; every substitution is listed in
SUBSTITUTIONS, printed by ``test_readme_substitutions`` and in each affected case, and a substitution that
no longer matches the README fails the test. Benchmark lines are not run (minutes to hours each); their
scripts must exist and accept every option the README gives them.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import REPO, SHARED_DATA

pytestmark = pytest.mark.slow

README = REPO / "README.md"
TIMEOUT = 300  # seconds for one command

# the slice of ../shared/data the commands see
# 80 documents: the fewest for which IVF / HI² train two k-means lists (faiss), as they do on real data
SCIFACT_DOCS, SCIFACT_TEST_QUERIES, SCIFACT_TRAIN_QUERIES = 80, 5, 4
TABLE_ROWS = 40  # rows kept of each STS-B / MSRP file
QA_ROWS = 12  # NQ-open and HotpotQA records kept (INTERS data)
BANKING_LABELS, BANKING_TRAIN, BANKING_TEST = 5, 8, 4  # intents, train and test rows per intent
ESSAY_CHARS = 5000  # each essay in the slice: about 1,100 tokens, one 1,024-token training segment
ESSAY_TXT_CHARS = 1200  # essay.txt: about 270 tokens, which MemoRAG's clue writer reads whole
SLICE = (f"../shared/data is a slice of the real data: SciFact {SCIFACT_DOCS} documents (the judged ones "
         f"first), {SCIFACT_TEST_QUERIES} test and {SCIFACT_TRAIN_QUERIES} train queries; the first "
         f"{TABLE_ROWS} rows of every STS-B and MSRP file; {QA_ROWS} NQ-open and HotpotQA records; "
         f"Banking77 {BANKING_LABELS} intents x "
         f"{BANKING_TRAIN} train / {BANKING_TEST} test rows; 3 essays cut to {ESSAY_CHARS} characters "
         f"(essay.txt: {ESSAY_TXT_CHARS})")


@dataclass(frozen=True)
class Substitution:
    kind: str  # "bash" or "python": which README blocks it applies to
    old: str
    new: str  # formatted with the workspace's names: {tiny_m3}, {tiny_reranker}, {port}, {stub_url}
    why: str


SUBSTITUTIONS = [
    Substitution("bash", "flagstone demo", "flagstone demo --docs 100", "the demo over 100 docstrings, not 2,000"),
    Substitution("bash", "--model bge-m3", "--model {tiny_m3}",
                 "BGE-M3 is a hub download (offline here): a tiny random checkpoint in BGE-M3's exact layout"),
    Substitution("bash", "--base-url http://localhost:8000/v1", "--base-url {stub_url}",
                 "no chat server runs here: a stub OpenAI-compatible server in this test, scripted to search "
                 "once and then answer"),
    Substitution("bash", "--port 8000", "--port {port}", "a free port instead of 8000"),
    Substitution("bash", "localhost:8000", "127.0.0.1:{port}", "the service's free port"),
    Substitution("bash", "flagstone train embedder", "flagstone train embedder --max-length 64",
                 "passages cut to 64 tokens (train.jsonl has 4 queries: one step per epoch)"),
    Substitution("bash", "--validate scifact-dev --validate-split dev",
                 "--validate scifact-dev --validate-split dev --epochs 1",
                 "one epoch, so the dev split is scored once, not after each of three epochs"),
    Substitution("bash", "flagstone train reranker", "flagstone train reranker --max-length 64",
                 "passages cut to 64 tokens (train.jsonl has 4 queries: one step per epoch)"),
    Substitution("bash", "-o benchmarks/data/scifact-dev --count 100", "-o benchmarks/data/scifact-dev --count 1",
                 "the slice has 4 SciFact train queries: carve 1 of them, not 100"),
    Substitution("bash", "--max-steps 200", "--max-steps 3",
                 "news recommender training: 3 steps, not 200 (minutes on a shared CPU)"),
    Substitution("bash", "flagstone inters-data -o inters-data",
                 "flagstone inters-data -o inters-data --held-out-per-task 1 --max-train-per-task 3",
                 "the slice has 4 SciFact train queries: 1 held-out and 3 training rows per task"),
    Substitution("bash", "flagstone train inters inters-data -o inters-lora",
                 "flagstone train inters inters-data -o inters-lora --max-steps 1 --batch-size 2",
                 "one LoRA step on SmolLM2, not an epoch"),
    Substitution("bash", "--rerank llm:inters-lora --rerank-depth 10", "--rerank llm:inters-lora --rerank-depth 3",
                 "the LoRA-tuned SmolLM2 reranks the top 3, not 10 (each pair is one forward pass on a shared CPU)"),
    Substitution("python", '"BAAI/bge-reranker-base"', '"{tiny_reranker}"',
                 "bge-reranker-base is a hub download (offline here): a tiny random checkpoint in its layout"),
    Substitution("python", "MemoRAG(generator, k=3)", "MemoRAG(generator, k=3, gist_tokens=32, clue_tokens=32)",
                 "shorter clues (and gists, were the essay too long to read whole) from the 135M model (its words are not "
                 "checked, the pipeline is)"),
    Substitution("python", "TrainingConfig(learning_rate=1e-3)", "TrainingConfig(learning_rate=1e-3, max_steps=1)",
                 "beacon training: one step, not an epoch"),
    Substitution("python", "token_segments(texts, lm.tokenizer, 1024)", "token_segments(texts, lm.tokenizer, 512)",
                 "beacon training on 512-token segments (two windows: the second reads the first's beacons); "
                 "a 1,024-token step of SmolLM2 takes minutes on a shared 2-core CPU"),
    Substitution("python", 'long_ids = lm.tokenizer(texts[0])["input_ids"]',
                 'long_ids = lm.tokenizer(texts[0])["input_ids"][:600]',
                 "the beacon reads 600 tokens of the essay (two compressed windows and an open one), not all of it"),
    Substitution("python", "beacon.generate(question_ids, state=", "beacon.generate(question_ids, max_new_tokens=8, state=",
                 "8 answer tokens, not 32 (each reads the whole memory layer by layer in Python)"),
]


# ---------------------------------------------------------------------------------------------- the README

@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence


def readme_blocks(text: str) -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if fence and lang is None:
            lang, start, body = fence.group(1) or "text", number, []
        elif line.strip() == "```" and lang is not None:
            blocks.append(Block(lang, "\n".join(body) + "\n", start))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md:{start}: a code block is never closed"
    return blocks


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, line) with backslash continuations joined and blank lines dropped."""
    out, pending, first = [], "", 0
    for offset, line in enumerate(block.text.splitlines(), 1):
        if not pending:
            first = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            out.append((first, full))
    return out


@dataclass(frozen=True)
class Case:
    kind: str  # flagstone, python, curl, benchmark, script
    line: int
    text: str  # as in the README

    @property
    def id(self) -> str:
        short = re.sub(r"\s+", " ", self.text.split("\n")[0] if self.kind != "python" else self.text)[:60]
        return f"L{self.line} {short}"


def readme_cases() -> list[Case]:
    cases = []
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        # json: the task file (written as my_task.json); text: the layout and architecture diagrams
        assert block.lang in ("python", "bash", "json", "text"), \
            f"README.md:{block.line}: a ```{block.lang} block this test does not run"
        if block.lang == "python":
            cases.append(Case("python", block.line, block.text))
        elif block.lang == "bash":
            for line, text in logical_lines(block):
                words = shlex.split(text, comments=True)
                if not words:  # a comment on a line of its own
                    continue
                if words[0] == "flagstone":
                    kind = "flagstone"
                elif words[0] == "curl":
                    kind = "curl"
                elif words[0] == ".venv/bin/python" and words[1].startswith("benchmarks/"):
                    kind = "benchmark"
                elif words[0] == "bash" and words[1].startswith("scripts/"):
                    kind = "script"
                elif words[0] == "bash" and words[1].startswith("benchmarks/") and words[1].endswith(".sh"):
                    kind = "benchmark"  # a chain of benchmarks
                else:
                    raise AssertionError(f"README.md:{line}: a command this test does not know how to run: {text}")
                cases.append(Case(kind, line, text))
    return cases


CASES = readme_cases()


def command_words(text: str) -> tuple[list[str], bool]:
    """A command line's words without its comment and without optional ``[--option VALUE]`` parts; and
    whether any optional part was left out."""
    words, kept, depth = shlex.split(text, comments=True), [], 0
    for word in words:
        depth += word.startswith("[")
        if not depth:
            kept.append(word)
        depth -= word.endswith("]")
    return kept, len(kept) != len(words)


def substitute(case: Case, names: dict[str, str]) -> tuple[str, list[str]]:
    """The case's text as run here, and a line per substitution made."""
    text, notes = case.text, []
    kind = "python" if case.kind == "python" else "bash"
    if kind == "bash":
        words, dropped = command_words(text)
        text = shlex.join(words)
        if dropped:
            notes.append("optional [...] parts left out")
    for sub in SUBSTITUTIONS:
        if sub.kind == kind and sub.old in text:
            text = text.replace(sub.old, sub.new.format(**names))
            notes.append(f"{sub.old!r} -> {sub.new!r}: {sub.why}")
    return text, notes


def test_readme_substitutions():
    """Every substitution still matches some README command; the table is printed for the record."""
    print(f"\n{SLICE}")
    for sub in SUBSTITUTIONS:
        cases = [c for c in CASES if ("python" if c.kind == "python" else "bash") == sub.kind]
        texts = [c.text if c.kind == "python" else shlex.join(command_words(c.text)[0]) for c in cases]
        assert any(sub.old in t for t in texts), f"substitution {sub.old!r} matches no README {sub.kind} block"
        print(f"  {sub.kind}: {sub.old!r} -> {sub.new!r} ({sub.why})")


def test_readme_has_the_commands_it_should():
    kinds = {c.kind for c in CASES}
    assert {"flagstone", "python", "curl", "benchmark", "script"} <= kinds
    commands = {shlex.split(c.text, comments=True)[1] for c in CASES if c.kind == "flagstone"}
    from flagstone.cli import COMMANDS

    top = {name.split()[0] for name in COMMANDS}
    assert commands <= top, f"README commands the CLI does not have: {sorted(commands - top)}"


# ----------------------------------------------------------------------------------------- the workspace

def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _read_qrels(path: Path) -> dict[str, list[tuple[str, str]]]:
    qrels: dict[str, list[tuple[str, str]]] = {}
    with open(path, encoding="utf-8") as handle:
        for row in list(csv.reader(handle, delimiter="\t"))[1:]:
            qrels.setdefault(row[0], []).append((row[1], row[2]))
    return qrels


def _write_qrels(path: Path, qrels: dict[str, list[tuple[str, str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, rows in qrels.items() for d, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def slice_scifact(source: Path, target: Path) -> dict:
    """SciFact with SCIFACT_DOCS documents: those judged for the kept queries first, then corpus order."""
    test = dict(list(_read_qrels(source / "qrels" / "test.tsv").items())[:SCIFACT_TEST_QUERIES])
    train = dict(list(_read_qrels(source / "qrels" / "train.tsv").items())[:SCIFACT_TRAIN_QUERIES])
    corpus = _read_jsonl(source / "corpus.jsonl")
    judged = {d for rows in (*test.values(), *train.values()) for d, _ in rows}
    keep = set(judged)
    for doc in corpus:
        if len(keep) >= SCIFACT_DOCS:
            break
        keep.add(doc["_id"])
    docs = [d for d in corpus if d["_id"] in keep]
    queries = [q for q in _read_jsonl(source / "queries.jsonl") if q["_id"] in test or q["_id"] in train]
    _write_jsonl(target / "corpus.jsonl", docs)
    _write_jsonl(target / "queries.jsonl", queries)
    _write_qrels(target / "qrels" / "test.tsv", test)
    _write_qrels(target / "qrels" / "train.tsv", train)
    return {"docs": {d["_id"]: d for d in docs}, "queries": {q["_id"]: q["text"] for q in queries},
            "test": test, "train": train}


def slice_rows(source: Path, target: Path, rows: int, delimiter: str, header: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if delimiter == "\t":  # MSRP: quotes are text, not CSV quoting
        lines = source.read_text(encoding="utf-8-sig").splitlines()
        target.write_text("\n".join(lines[: rows + header]) + "\n", encoding="utf-8")
        return
    with open(source, encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle, delimiter=delimiter))
    with open(target, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(table[: rows + header])


def slice_banking(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    labels: list[str] = []
    for split, per_label in (("train", BANKING_TRAIN), ("test", BANKING_TEST)):
        with open(source / f"{split}.csv", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not labels:
            labels = list(dict.fromkeys(r["category"] for r in rows))[:BANKING_LABELS]
        kept = [r for label in labels for r in [r for r in rows if r["category"] == label][:per_label]]
        with open(target / f"{split}.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(kept)


def essay_text(path: Path, chars: int) -> str:
    """The essay's beginning, up to ``chars`` characters, ending at a line or sentence end."""
    text = path.read_text(encoding="utf-8")
    cut = max(text.rfind("\n", 0, chars), text.rfind(". ", 0, chars) + 1)
    return text[: cut if cut > chars // 2 else chars].strip() + "\n"


def build_data_slice(data: Path) -> dict:
    scifact = slice_scifact(SHARED_DATA / "beir" / "scifact", data / "beir" / "scifact")
    for source in sorted((SHARED_DATA / "sts" / "stsb_multi_mt").glob("stsb-*-test.csv")):
        slice_rows(source, data / "sts" / "stsb_multi_mt" / source.name, TABLE_ROWS, ",", header=False)
    slice_rows(SHARED_DATA / "sts/stsb_multi_mt/stsb-en-train.csv", data / "sts/stsb_multi_mt/stsb-en-train.csv",
               TABLE_ROWS, ",", header=False)
    for msrp in ("pair_classification/msrp/msr-para-test.tsv", "pair_classification/msrp/msr-para-train.tsv"):
        slice_rows(SHARED_DATA / msrp, data / msrp, TABLE_ROWS, "\t", header=True)
    for qa in ("qa/nq_open/NQ-open.dev.jsonl", "qa/hotpotqa/hotpot_dev_distractor_sample100.jsonl"):  # inters-data
        (data / qa).parent.mkdir(parents=True, exist_ok=True)
        lines = (SHARED_DATA / qa).read_text(encoding="utf-8").splitlines(keepends=True)
        (data / qa).write_text("".join(lines[:QA_ROWS]), encoding="utf-8")
    slice_banking(SHARED_DATA / "classification" / "banking77", data / "classification" / "banking77")
    essays = data / "longctx" / "paulgraham_essays"
    essays.mkdir(parents=True)
    for name in ("worked.txt", "avg.txt", "founders.txt"):
        text = essay_text(SHARED_DATA / "longctx" / "paulgraham_essays" / name, ESSAY_CHARS)
        (essays / name).write_text(text, encoding="utf-8")
    return scifact


def write_inputs(work: Path, data: Path, scifact: dict, json_block: str) -> None:
    """The files the README's commands take as given, made from the real data in the slice."""
    shutil.copy(data / "beir" / "scifact" / "corpus.jsonl", work / "corpus.jsonl")
    (work / "texts.txt").write_text("".join(q + "\n" for q in scifact["queries"].values()), encoding="utf-8")
    (work / "essay.txt").write_text(essay_text(SHARED_DATA / "longctx" / "paulgraham_essays" / "worked.txt",
                                               ESSAY_TXT_CHARS), encoding="utf-8")
    docs = scifact["docs"]

    def passage(doc_id: str) -> str:
        return f"{docs[doc_id]['title']} {docs[doc_id]['text']}".strip()

    train = [{"query": scifact["queries"][q], "pos": [passage(d) for d, _ in rows]}
             for q, rows in scifact["train"].items()]
    _write_jsonl(work / "train.jsonl", train)
    negatives = [passage(d) for d in list(docs)[-3:]]  # documents no kept train query is judged on
    _write_jsonl(work / "few.jsonl", [{**row, "neg": negatives} for row in train[:4]])
    # the task file is the README's own JSON block; its pairs.csv holds real STS-B pairs under those names
    (work / "my_task.json").write_text(json_block, encoding="utf-8")
    task = json.loads(json_block)
    columns = task["columns"]
    with open(data / "sts" / "stsb_multi_mt" / "stsb-en-test.csv", encoding="utf-8", newline="") as handle:
        pairs = list(csv.reader(handle))
    with open(work / task["files"]["test"], "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([columns["sentence1"], columns["sentence2"], columns["score"]])
        writer.writerows(pairs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StubChatServer:
    """An OpenAI-compatible /v1/chat/completions that searches once, then answers (Search-o1's protocol)."""

    SEARCH = "Zinc may help. <|begin_search_query|>zinc lozenges and the common cold<|end_search_query|>"
    ANSWER = "The abstracts say zinc lozenges shorten colds. \\boxed{zinc lozenges}"

    def __init__(self) -> None:
        stub = self
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                stub.requests.append(body)
                text = stub.SEARCH if len(stub.requests) == 1 else stub.ANSWER
                reply = json.dumps({"id": "stub", "object": "chat.completion", "model": body.get("model"),
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200 if self.path == "/v1/chat/completions" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Workspace:
    work: Path
    names: dict[str, str]
    env: dict[str, str]
    have_data: bool  # the shared data is present, and the slice and input files are in place
    service: subprocess.Popen | None = None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_m3_dir, tiny_cross_encoder_dir):
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    stub = StubChatServer()
    names = {"port": str(free_port()), "stub_url": stub.url,
             "tiny_m3": str(tiny_m3_dir), "tiny_reranker": str(tiny_cross_encoder_dir)}
    have_data = (SHARED_DATA / "beir" / "scifact" / "corpus.jsonl").is_file()
    if have_data:
        data = root / "shared" / "data"
        scifact = build_data_slice(data)
        json_blocks = [b.text for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang == "json"]
        assert len(json_blocks) == 1, "the README's one JSON block is the task file my_task.json"
        json_block = json_blocks[0]
        write_inputs(work, data, scifact, json_block)
    space = Workspace(work, names, env, have_data)
    yield space
    stub.stop()
    if space.service is not None:
        stop_process(space.service)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------ running cases

DATA_WORDS = ("../shared/data", "corpus.jsonl", "texts.txt", "essay.txt", "train.jsonl", "mined.jsonl",
              "few.jsonl", "my_task.json", "scifact-hi2", "--suite", "--tasks", "my-model")
OUTPUT_OPTIONS = ("-o", "--output", "--output-dir", "--run-dir", "--memory", "--data-dir")


def needs_data(case: Case) -> bool:
    text = case.text if case.kind == "python" else shlex.join(command_words(case.text)[0])  # comments aside
    return any(word in text for word in DATA_WORDS)


def run(argv: list[str], space: Workspace, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=space.work, env=space.env, capture_output=True, text=True, timeout=timeout)


def report(result: subprocess.CompletedProcess, limit: int = 3000) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-limit:]}\n--- stderr\n{result.stderr[-limit:]}"


_help_cache: dict[str, subprocess.CompletedProcess] = {}


def check_benchmark(words: list[str], space: Workspace) -> None:
    script = REPO / words[1]
    assert script.is_file(), f"{words[1]} does not exist"
    if script.suffix == ".sh":  # a chain of benchmarks: it parses, and each one it runs exists
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        text = script.read_text()
        steps = re.findall(r"^for step in (.+); do$", text, flags=re.M)[0].split()
        steps += re.findall(r'^"\$python" benchmarks/(\w+)\.py', text, flags=re.M)  # steps run outside the loop
        for step in steps:
            assert (REPO / "benchmarks" / f"{step}.py").is_file(), f"{words[1]} runs benchmarks/{step}.py: missing"
        return
    # a sub-command's options are listed by its own --help (longctx.py train --help); a positional that is not a
    # sub-command (none is named like an option) makes argparse answer the script's help or an error
    stage = words[2:3] if len(words) > 2 and not words[2].startswith("-") else []
    key = " ".join(words[1:2] + stage)
    if key not in _help_cache:
        _help_cache[key] = subprocess.run([sys.executable, str(script), *stage, "--help"], cwd=REPO, env=space.env,
                                          capture_output=True, text=True, timeout=120)
    result = _help_cache[key]
    assert result.returncode == 0 and "usage:" in result.stdout, report(result)
    options = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
    unknown = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", result.stdout)]
    assert not unknown, f"{words[1]} --help does not list {unknown}"


def run_flagstone(text: str, space: Workspace, capsys) -> None:
    """In this process, through the console script's own entry point (flagstone.cli.main): a fresh Python
    per command would spend most of the test's time importing torch. The service runs in its own process."""
    from flagstone.cli import main

    words = shlex.split(text)
    if words[1] == "serve":
        start_service([sys.executable, "-m", "flagstone", *words[1:]], space)
        return
    header = capsys.readouterr().out  # what the test printed so far: kept in front of the command's output
    try:
        code = main(words[1:])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    printed = f"exit {code}\n--- stdout\n{out.out[-3000:]}\n--- stderr\n{out.err[-3000:]}"
    print(header + printed)
    assert code == 0, printed
    for option, value in zip(words, words[1:]):
        if option in OUTPUT_OPTIONS:
            assert (space.work / value).exists(), f"{text}: {value} was not written\n{printed}"


def start_service(argv: list[str], space: Workspace) -> None:
    import httpx

    log = open(space.work / "serve.log", "w")  # noqa: SIM115 (closed with the process)
    space.service = subprocess.Popen(argv, cwd=space.work, env=space.env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{space.names['port']}/health"
    deadline = time.time() + 120
    while True:
        assert space.service.poll() is None, (space.work / "serve.log").read_text()
        try:
            response = httpx.get(url, timeout=5)
            break
        except httpx.TransportError:
            assert time.time() < deadline, "the service did not answer /health in 120 s"
            time.sleep(0.5)
    assert response.status_code == 200, response.text
    print(f"/health: {response.text}")
    started = (space.work / "serve.log").read_text()
    assert re.search(r"embedding on (torch|onnx|openvino) (float32|bfloat16|int8)", started), started


def run_curl(text: str, space: Workspace) -> None:
    import httpx

    assert space.service is not None and space.service.poll() is None, "flagstone serve is not running"
    words = shlex.split(text)[1:]
    headers, body, url = {}, None, None
    i = 0
    while i < len(words):
        if words[i] == "-s":
            i += 1
        elif words[i] == "-H":
            key, value = words[i + 1].split(":", 1)
            headers[key.strip()] = value.strip()
            i += 2
        elif words[i] == "-d":
            body = words[i + 1]
            i += 2
        else:
            assert url is None, f"curl argument this test does not know: {words[i]}"
            url = words[i] if "://" in words[i] else "http://" + words[i]
            i += 1
    response = httpx.request("POST" if body is not None else "GET", url, headers=headers, content=body, timeout=120)
    print(response.status_code, response.text[:1000])
    assert response.is_success, f"{response.status_code}: {response.text}"


def run_python(case: Case, text: str, space: Workspace) -> None:
    path = space.work / f"readme_L{case.line}.py"
    path.write_text(text, encoding="utf-8")
    result = run([sys.executable, path.name], space)
    assert result.returncode == 0, report(result)
    print(result.stdout[-2000:])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_readme_command(case, workspace, monkeypatch, capsys):
    text, notes = substitute(case, workspace.names)
    print(f"README.md:{case.line}: {case.text}")
    for note in notes:
        print(f"  substituted {note}")
    if notes:
        print(f"  runs: {text}")
    words = shlex.split(case.text, comments=True) if case.kind != "python" else []
    if case.kind == "benchmark":
        check_benchmark(words, workspace)
        pytest.skip(f"benchmark: minutes to hours ({words[1]} exists and accepts these options)")
    if case.kind == "script":
        script = REPO / words[1]
        assert script.is_file(), f"{words[1]} does not exist"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        pytest.skip(f"{words[1]} installs into .venv (this suite runs in that install); "
                    "scripts/demo.sh's `flagstone demo` and scripts/test.sh's suite run here")
    if needs_data(case) and not workspace.have_data:
        pytest.skip(f"needs the shared data ({SHARED_DATA} is absent)")
    print(SLICE)
    monkeypatch.chdir(workspace.work)
    if case.kind == "flagstone":
        run_flagstone(text, workspace, capsys)
    elif case.kind == "curl":
        run_curl(text, workspace)
    else:
        run_python(case, text, workspace)
