"""What every benchmark shares: where results go and how they are written."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def save_results(name: str, table: str, **json_files: dict) -> None:
    """Write ``<name>.md`` (the table, also printed) and one ``<key>.json`` per keyword argument."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for stem, data in json_files.items():
        (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)


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


def mine_scifact_examples(test, train_qrels, doc_text: dict[str, str], query_ids, cache, base: str):
    """Training examples for ``query_ids`` (train qrels) with 15 hard negatives each from ``base``'s dense
    ranks 5-99 over the whole corpus (bf16 inference, embeddings cached): what both training benchmarks train on."""
    from flagstone.models.embedder import Embedder
    from flagstone.retrieval.retriever import Retriever
    from flagstone.training.data import examples_from_qrels
    from flagstone.training.mining import mine_hard_negatives

    retriever = Retriever(Embedder(base, dtype="bfloat16", show_progress=False), signals=["dense"], cache=cache)
    retriever.fit(test.doc_ids, test.doc_texts)
    examples = examples_from_qrels(test.queries, train_qrels, doc_text, query_ids)
    examples = mine_hard_negatives(examples, retriever, doc_text, mode="dense", rank_range=(5, 100),
                                   n_negatives=15, seed=0)
    return examples, retriever
