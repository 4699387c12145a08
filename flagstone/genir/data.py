"""What a generative retriever trains on, read from a BEIR folder: the corpus and (query, document) pairs."""
from __future__ import annotations

import os

from flagstone.evaluation.beir import load_beir, load_corpus


def load_training_corpus(folder: str | os.PathLike[str],
                         split: str | None) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Document ids, texts, and one (query text, doc id) pair per relevant judgement of ``split`` (None: no
    queries, the documents alone). Judgements of 0 are not relevant and are skipped."""
    if split is None:
        doc_ids, doc_texts = load_corpus(os.path.join(folder, "corpus.jsonl"))
        return doc_ids, doc_texts, []
    data = load_beir(folder, split)
    pairs = [(data.queries[q], d) for q, judged in data.qrels.items() for d, relevance in judged.items()
             if relevance > 0]
    return data.doc_ids, data.doc_texts, pairs
