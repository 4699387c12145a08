"""What every benchmark shares: where results go and how they are written, and the loaders, prompts and scoring
that more than one benchmark uses (each says which)."""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from flagstone._io import LegacyLayout
    from flagstone.retrieval.retriever import Retriever


@dataclass(frozen=True)
class Output:
    """One path a benchmark writes: the flag that names it, the path given, the script's own default, and how
    the saver recognises a folder it wrote before output markers existed (``file=True``: a single file)."""

    flag: str
    path: str | Path
    default: str | Path
    legacy: LegacyLayout | None = None
    file: bool = False


def output_refusal(outputs: Sequence[Output], overwrite: bool) -> str | None:
    """The one-line error for the first output that may not be written, or None when all may.

    The same rule the savers apply at save time (:func:`flagstone._io.check_output_folder`), checked before any
    heavy work: a non-empty folder the user named needs ``--overwrite``, and even then only one Flagstone wrote
    is replaced. A script's own default folder under benchmarks/models is the script's to replace on a rerun
    (so it is checked as if ``--overwrite`` were given). A file output is refused when it exists, unless
    ``--overwrite`` or it is the default."""
    from flagstone._io import check_output_folder
    from flagstone.errors import DataError

    for output in outputs:
        own = Path(output.path).resolve() == Path(output.default).resolve()
        if output.file:
            if Path(output.path).exists() and not (overwrite or own):
                return f"{output.flag}: {output.path} exists; pass --overwrite to replace it"
            continue
        try:
            check_output_folder(output.path, overwrite=overwrite or own, legacy=output.legacy)
        except DataError as error:
            return f"{output.flag}: {error}"
    return None


def refused(outputs: Sequence[Output], overwrite: bool) -> bool:
    """Print :func:`output_refusal`'s error to stderr; True when there was one (the script then exits 2)."""
    message = output_refusal(outputs, overwrite)
    if message:
        print(message, file=sys.stderr)
    return message is not None


def save_results(name: str, table: str, **json_files: dict) -> None:
    """Write ``<name>.md`` (the table, also printed) and one ``<key>.json`` per keyword argument."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for stem, data in json_files.items():
        (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


def append_run(name: str, run: dict, table: str, *, latest_at_top: bool = False) -> int:
    """Add one run to ``<name>.json`` (``{"runs": [...]}``) and rewrite ``<name>.md`` with every run's table,
    newest last, so a tuning run never replaces the ones before it. Returns the run's number (1-based).

    ``latest_at_top`` also puts the new run's fields at the top level of the json (beside ``runs``), for
    readers that look for the latest figures there. A file from before runs were kept becomes the first run,
    its table taken from the ``<name>.md`` it was written with."""
    import datetime
    import subprocess

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    table_path = RESULTS / f"{name}.md"
    runs: list[dict] = []
    if path.exists():
        saved = json.loads(path.read_text())
        if "runs" in saved:
            runs = saved["runs"]
        else:  # a file from before runs were kept: its one run, with the table written beside it
            legacy = dict(saved)
            if "table" not in legacy and table_path.is_file():
                legacy["table"] = table_path.read_text().rstrip("\n")
            runs = [legacy]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    latest = {**run, "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit.stdout.strip() or None, "table": table}
    runs.append(latest)
    sections = []
    for number, saved_run in enumerate(runs, 1):
        when = saved_run.get("finished", "date not recorded")
        sections.append(f"## Run {number} ({when}, commit {saved_run.get('commit') or 'not recorded'})\n\n"
                        f"arguments: `{json.dumps(saved_run.get('arguments', {}))}`\n\n"
                        + saved_run.get("table", "(table not kept for this run; see the json)"))
    document = {**latest, "runs": runs} if latest_at_top else {"runs": runs}
    atomic = path.with_suffix(".json.tmp")
    atomic.write_text(json.dumps(document, indent=2) + "\n")
    atomic.replace(path)
    table_path.write_text("\n\n".join(sections) + "\n")
    print(table)
    return len(runs)


def set_result_entry(stem: str, key: str, value: object) -> None:
    """Set one top-level entry of ``<stem>.json``, keeping the rest of the file (written to a sibling, then
    renamed): how a benchmark adds its part to another benchmark's results file."""
    path = RESULTS / f"{stem}.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[key] = value
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(saved, indent=2) + "\n")
    staging.replace(path)


def load_scifact_with_train(data: str | Path):
    """SciFact's test split (corpus, queries, test qrels), its train qrels and ``{doc id: text}``, or None
    with a message when the folder is missing. Both training benchmarks start here."""
    from flagstone.evaluation.beir import load_beir, load_qrels

    if not Path(data).is_dir():
        print(f"SciFact not found at {data}", file=sys.stderr)
        return None
    test = load_beir(data, "test")
    train_qrels = load_qrels(Path(data) / "qrels" / "train.tsv")
    return test, train_qrels, dict(zip(test.doc_ids, test.doc_texts))


def normalised(text: str) -> str:
    """A query's text for spotting duplicates: lower-cased, spaces collapsed."""
    return re.sub(r"\s+", " ", text.strip().lower())


def positives_of(qrels: dict, query_ids=None) -> set[str]:
    """Documents judged relevant (grade > 0) for ``query_ids`` (every query of ``qrels`` when None)."""
    queries = qrels if query_ids is None else query_ids
    return {d for q in queries for d, grade in qrels[q].items() if grade > 0}


def read_carved_split(split_folder: str | Path, data: str | Path, train_qrels: dict):
    """(training query ids, dev query ids, split record) of a folder ``flagstone data carve-split`` wrote from
    ``data``'s train split: its manifest's file hashes are checked; ValueError when they do not match or the
    folder was not carved from that train split."""
    from flagstone.errors import FlagstoneError
    from flagstone.evaluation.beir import load_qrels
    from flagstone.evaluation.splits import read_split_manifest

    try:
        manifest = read_split_manifest(split_folder)  # checks every file's hash
    except FlagstoneError as error:
        raise ValueError(str(error)) from None
    carved = manifest["carved"]
    folder = Path(split_folder)
    dev_qrels = load_qrels(folder / "qrels" / f"{carved}.tsv")
    rest_qrels = load_qrels(folder / "qrels" / f"{manifest['source']['split']}.tsv")
    if manifest["source"]["split"] != "train" or not set(dev_qrels) | set(rest_qrels) <= set(train_qrels):
        raise ValueError(f"{folder} was not carved from {data}'s train split")
    split = {"folder": str(folder), "seed": manifest["seed"], "rule": manifest["rule"], "carved": carved,
             "splits": manifest["splits"], "files_sha256": manifest["files_sha256"]}
    return sorted(rest_qrels), sorted(dev_qrels), split


DEV_SLICE_QUERIES = 100


def dev_slice(train_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(fit ids, dev ids): the 100 train queries numpy default_rng(0) draws from ``train_ids`` (qrels/train.tsv's
    order) as the dev slice, sorted, and the rest in their order. rerank_scifact.py holds them out of the
    cross-encoder's training, train_scifact.py --without-dev-slice out of the tuning copies' training, and
    best_pipeline.py chooses its weights on them."""
    import numpy as np

    dev_ids = sorted(np.random.default_rng(0).choice(list(train_ids), size=DEV_SLICE_QUERIES, replace=False).tolist())
    held = set(dev_ids)
    return [q for q in train_ids if q not in held], dev_ids


def held_out_record(model_folder: Path) -> Path:
    """The file beside a model that train_scifact.py --without-dev-slice writes and best_pipeline.py checks: which
    queries the model never trained on."""
    return model_folder.with_name(model_folder.name + ".held-out.json")


def seen_and_unseen(query_ids: list[str], qrels: dict, positives: set[str]) -> tuple[list[str], list[str]]:
    """``query_ids`` split by whether a relevant document (grade > 0 in ``qrels``) is among ``positives``."""
    seen = [q for q in query_ids if any(d in positives for d, g in qrels[q].items() if g > 0)]
    return seen, [q for q in query_ids if q not in set(seen)]


def split_test_queries(data: Path, test_qrels: dict, train_qrels: dict) -> dict[str, list[str]]:
    """Test query ids by subset, with the queries duplicated in train removed (listed under "duplicates"):
    ``seen_docs`` have a relevant document that is a positive of some train query, ``unseen_docs`` none.
    scifact_subsets.py and rerank_scifact.py report every SciFact figure on these."""
    from flagstone.evaluation.beir import load_queries

    queries = load_queries(Path(data) / "queries.jsonl")
    train_texts = {normalised(queries[q]) for q in train_qrels}
    duplicates = sorted(q for q in test_qrels if normalised(queries[q]) in train_texts)
    kept = [q for q in test_qrels if q not in set(duplicates)]
    seen, unseen = seen_and_unseen(kept, test_qrels, positives_of(train_qrels))
    return {"overall": kept, "seen_docs": seen, "unseen_docs": unseen, "duplicates": duplicates}


def compare_on_subsets(base: dict[str, float], other: dict[str, float],
                       subsets: dict[str, list[str]]) -> dict[str, dict | None]:
    """``other`` against ``base`` (per-query scores) on every subset of :func:`split_test_queries` (not the
    duplicates): flagstone.evaluation.significance.paired_test's means, delta and two-sided p-value; None for
    a subset with no queries (a paired test needs one)."""
    from flagstone.evaluation.significance import paired_test

    return {name: paired_test(base, other, queries=ids).as_dict() if ids else None
            for name, ids in subsets.items() if name != "duplicates"}


def mine_scifact_examples(test, train_qrels, doc_text: dict[str, str], query_ids, cache, base: str,
                          dtype: str = "bfloat16"):
    """Training examples for ``query_ids`` (train qrels) with 15 hard negatives each from ``base``'s dense
    ranks 5-99 over the whole corpus (``dtype`` inference, embeddings cached): what both training benchmarks
    train on."""
    from flagstone.models.embedder import Embedder
    from flagstone.retrieval.retriever import Retriever
    from flagstone.training.data import examples_from_qrels
    from flagstone.training.mining import mine_hard_negatives

    retriever = Retriever(Embedder(base, dtype=dtype, show_progress=False), signals=["dense"], cache=cache)
    retriever.fit(test.doc_ids, test.doc_texts)
    examples = examples_from_qrels(test.queries, train_qrels, doc_text, query_ids)
    examples = mine_hard_negatives(examples, retriever, doc_text, mode="dense", rank_range=(5, 100),
                                   n_negatives=15, seed=0)
    return examples, retriever


def pseudo_query_examples(doc_ids: list[str], doc_text: dict[str, str], exclude_docs: set[str], retriever,
                          n_documents: int, keep_top: int, *, seed: int = 0, generate=None,
                          mine_mode: str = "dense", miner=None) -> tuple[list, dict]:
    """InPars / Promptagator-style training examples for documents no training query points at: ``n_documents``
    documents drawn (``seed``) from ``doc_ids`` minus ``exclude_docs`` (the training positives), one greedy
    pseudo-query each from the bundled SmolLM2 (flagstone.genir.generate_pseudo_queries, float32, cached on
    disk), kept only when ``retriever`` (dense) ranks its own document in the top ``keep_top`` (consistency
    filtering), with 15 hard negatives from the same ranks 5-99 as :func:`mine_scifact_examples` (``mine_mode``:
    the retriever's mode they are mined from; the cross-encoder mines from its hybrid first stage; ``miner``, when
    given, is searched for them instead of ``retriever``, e.g. best_pipeline.FusedFirstStage). Returns the
    examples and a summary of what was generated and kept (with the bundled generator also its stats under
    "generation": replies, time, documents/s, recorded_seconds counting documents served from the cache). ``generate``
    replaces the generator (tests)."""
    import random

    from flagstone.training.data import examples_from_qrels
    from flagstone.training.mining import mine_hard_negatives

    generation = {}  # the bundled generator's own stats (PseudoQueries.stats: replies, time, documents/s)
    if generate is None:
        from flagstone.genir.query_generation import generate_pseudo_queries

        def generate(texts):
            result = generate_pseudo_queries(texts, dtype="float32")
            generation.update(result.stats())
            return result.queries
    pool = sorted(d for d in doc_ids if d not in exclude_docs)
    docs = random.Random(seed).sample(pool, min(n_documents, len(pool)))
    queries, qrels, without_query = {}, {}, 0
    for doc, written in zip(docs, generate([doc_text[d] for d in docs])):
        without_query += not written  # no usable reply: counted, never replaced by a default
        for i, query in enumerate(written):
            queries[f"pseudo:{doc}:{i}"], qrels[f"pseudo:{doc}:{i}"] = query, {doc: 1}
    ids = list(queries)
    ranked = retriever.search([queries[q] for q in ids], mode="dense", k=keep_top).ids if ids else []
    kept = [q for q, row in zip(ids, ranked) if next(iter(qrels[q])) in row]
    examples = examples_from_qrels(queries, qrels, doc_text, kept)
    examples = mine_hard_negatives(examples, retriever if miner is None else miner, doc_text, mode=mine_mode,
                                   rank_range=(5, 100), n_negatives=15, seed=seed)
    summary = {"documents": len(docs), "pool": len(pool), "queries_written": len(ids),
               "documents_without_query": without_query, "kept": len(kept),
               "keep_top": keep_top, "negatives_from": mine_mode if miner is None else type(miner).__name__,
               "generator": "SmolLM2-135M-Instruct (bundled), greedy, float32",
               "generation": generation or None}
    return examples, summary


# -- long-context text kinds: longctx.py and longctx_extensible.py train and evaluate on the same documents ------
def joined_abstracts(corpus: Path, min_chars: int, limit: int | None = None) -> list[str]:
    """Consecutive abstracts of a BEIR corpus (file order; the first ``limit`` lines when given) joined into
    documents of at least ``min_chars``; a last group shorter than that is dropped."""
    docs, current = [], []
    with corpus.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            text = (row.get("title", "") + ". " + row["text"]).strip(". ") if row.get("title") else row["text"]
            if not text.strip():
                continue
            current.append(text.strip())
            if sum(len(t) for t in current) >= min_chars:
                docs.append("\n\n".join(current))
                current = []
    return docs


def hotpot_documents(path: Path) -> list[str]:
    """Each HotpotQA record's 10 Wikipedia paragraphs (title line + sentences) as one document."""
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        context = json.loads(line)["context"]
        paragraphs = [f"{title}\n{''.join(sentences)}" for title, sentences in zip(context["title"],
                                                                                   context["sentences"])]
        docs.append("\n\n".join(paragraphs))
    return docs


def first_search_or_answer_decision(record: dict) -> dict | None:
    """The first scored search-or-answer action in a stored rag_qa answer record (Search-o1's first decision after
    its first search), or None when the trace has none."""
    return next((a for a in record["trace"]["actions"]
                 if a["source"] == "scored" and set(a["scores"]) == {"search", "answer"}), None)


def needle_turn_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the passkey-style needle chat turn around its haystack, for beacon.py and longctx.py: what
    comes before the haystack (template + user turn start) and what comes after it (DEFAULT_NEEDLE's question,
    the end of the turn and the answer's first words, which the model continues with the passphrase)."""
    from flagstone.evaluation.niah import DEFAULT_NEEDLE

    marker = "\u0000HAYSTACK\u0000"
    turn = tokenizer.apply_chat_template([{"role": "user", "content": f"{marker}\n\n{DEFAULT_NEEDLE.question} "
                                                                      "Answer with the passphrase only."}],
                                         tokenize=False, add_generation_prompt=True) + DEFAULT_NEEDLE.lead
    before, after = turn.split(marker)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


def per_query_ndcg(retriever: Retriever, queries: dict[str, str], query_ids: list[str], qrels: dict,
                   mode: str) -> dict[str, float]:
    """nDCG@10 per query of ``retriever`` searched in ``mode`` (a signal, or "all": the hybrid of dense, sparse
    and ColBERT with M3's head weights), top DEFAULT_EVAL_DEPTH: how train_scifact.py and scifact_subsets.py
    score every SciFact model."""
    from flagstone.evaluation import DEFAULT_EVAL_DEPTH
    from flagstone.evaluation.metrics import evaluate_run
    from flagstone.retrieval.retriever import HybridConfig
    from flagstone.training.embedder import HEAD_WEIGHTS

    texts = [queries[q] for q in query_ids]
    if mode == "all":
        hits = retriever.search(texts, mode="hybrid", k=DEFAULT_EVAL_DEPTH, hybrid=HybridConfig(weights=HEAD_WEIGHTS))
    else:
        hits = retriever.search(texts, mode=mode, k=DEFAULT_EVAL_DEPTH)
    report = evaluate_run(hits.to_run(query_ids), {q: qrels[q] for q in query_ids}, (10,), ("ndcg",))
    return {q: values["ndcg@10"] for q, values in report.per_query.items()}
