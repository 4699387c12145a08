"""The real-text vector set for the ANN benchmark: 70k short texts from ../shared/data, encoded once.

Corpus: open-domain QA questions (NQ, TriviaQA, WebQuestions, SQuAD, CuratedTREC), BEIR query files
(Quora, NQ, HotpotQA), HotpotQA dev questions, and SciFact's documents; exact duplicates removed.
Queries: 1,000 held-out questions drawn from the same short-text pool (never in the corpus).
Vectors come from the bundled all-MiniLM-L6-v2 through Flagstone's embedding cache, so only the first
run encodes (about 5 minutes on 2 cores).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from _common import SHARED_DATA

N_QUERIES = 1000
SEED = 20261126


@dataclass
class AnnData:
    doc_ids: list[str]
    doc_texts: list[str]
    doc_vectors: np.ndarray
    query_texts: list[str]
    query_vectors: np.ndarray


def short_texts() -> list[str]:
    texts: list[str] = []
    for path in sorted((SHARED_DATA / "qa" / "dpr_open_domain").glob("*.jsonl")):
        texts += [json.loads(line)["question"] for line in path.open(encoding="utf-8") if line.strip()]
    for path in sorted((SHARED_DATA / "beir_queries_qrels").glob("*/queries.test.jsonl")):
        texts += [json.loads(line)["text"] for line in path.open(encoding="utf-8") if line.strip()]
    hotpot = SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_v1_simplified.json"
    texts += [row["question"] for row in json.loads(hotpot.read_text(encoding="utf-8"))]
    return texts


def load_ann_data(show_progress: bool = True) -> AnnData:
    from flagstone.evaluation.beir import load_corpus
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder

    pool = list(dict.fromkeys(t.strip() for t in short_texts() if t.strip()))
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(pool))
    query_texts = [pool[i] for i in order[:N_QUERIES]]
    corpus = [pool[i] for i in order[N_QUERIES:]]
    _, scifact = load_corpus(SHARED_DATA / "beir" / "scifact" / "corpus.jsonl")
    held_out = set(query_texts)
    corpus += [t for t in scifact if t not in held_out]
    corpus = list(dict.fromkeys(corpus))
    embedder = Embedder(show_progress=show_progress)
    cache = EmbeddingCache()
    doc_vectors = cache.encode(embedder, corpus).dense
    query_vectors = cache.encode(embedder, query_texts).dense
    return AnnData([f"d{i}" for i in range(len(corpus))], corpus, doc_vectors, query_texts, query_vectors)


if __name__ == "__main__":
    data = load_ann_data()
    print(f"{len(data.doc_ids)} documents, {len(data.query_texts)} queries, dim {data.doc_vectors.shape[1]}")
