"""Training a generative retriever: indexing (document text -> docid) and retrieval (query -> docid) in one loop.

Each epoch shows the model, for every document, its opening ``document_tokens`` tokens (indexing) and
``pseudo_queries`` cheap pseudo-queries (retrieval): its first sentence and random spans of 8 to 20 consecutive
words, drawn afresh every epoch (DSI's and NCI's "document as query" spans; no query generator is involved).
With ``pseudo_query_source="llm"`` the pseudo-queries are instead the ones a chat LM wrote for each document
(``generated_queries``, from :func:`~flagstone.genir.query_generation.generate_pseudo_queries`), all of them every
epoch. Real training queries (``queries``: (query text, doc id) pairs, e.g. SciFact's train split) are added every
epoch. The loss is the cross-entropy of each docid token over the docid vocabulary (teacher forcing).
"""
from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from flagstone.errors import DataError
from flagstone.genir.docids import Docids
from flagstone.genir.model import DEFAULT_TOKENIZER, GenerativeRetriever
from flagstone.genir.settings import GenIRModelConfig, GenIRTrainingSettings

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class GenIRTrainingResult:
    retriever: GenerativeRetriever
    steps: int
    seconds: float
    examples_per_epoch: int
    epochs_run: int  # fewer than asked when ``max_seconds`` ran out
    losses: list[float] = field(default_factory=list)  # one per optimiser step


def pseudo_queries(text: str, n: int, span_words: tuple[int, int], rng: random.Random) -> list[str]:
    """``n`` cheap pseudo-queries of a document: its first sentence, then random spans of whole words."""
    if n == 0 or not text.strip():
        return []
    words = text.split()
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    out = [" ".join(first.split()[: span_words[1] * 2])]
    low, high = span_words
    for _ in range(n - 1):
        length = min(len(words), rng.randint(low, high))
        start = rng.randint(0, len(words) - length)
        out.append(" ".join(words[start: start + length]))
    return out


def train_generative_retriever(
    doc_texts: Sequence[str],
    docids: Docids,
    *,
    queries: Sequence[tuple[str, str]] = (),
    config: GenIRModelConfig = GenIRModelConfig(),
    settings: GenIRTrainingSettings = GenIRTrainingSettings(),
    tokenizer: str = DEFAULT_TOKENIZER,
    on_epoch: Callable[[int, GenerativeRetriever], None] | None = None,
    generated_queries: Sequence[Sequence[str]] | None = None,
) -> GenIRTrainingResult:
    """Initialise a model for ``docids`` (document ``i``'s text is ``doc_texts[i]``) and train it.

    ``queries`` are (query text, doc id) pairs; a doc id outside ``docids`` is a :class:`DataError`.
    ``generated_queries[i]``: document ``i``'s LM-written pseudo-queries, given exactly when
    ``settings.pseudo_query_source`` is ``"llm"`` or ``"llm+spans"`` (with ``"llm"``, a document with none gets no
    pseudo-query).
    ``on_epoch(epoch, retriever)`` is called after each epoch (the model back in training mode after it).
    """
    import torch
    from tqdm.auto import tqdm

    if len(doc_texts) != len(docids):
        raise ValueError(f"{len(doc_texts)} texts for {len(docids)} docids")
    llm = settings.pseudo_query_source in ("llm", "llm+spans")
    spans = settings.pseudo_query_source in ("spans", "llm+spans")
    if llm != (generated_queries is not None):
        raise ValueError("generated_queries are given exactly when settings.pseudo_query_source is 'llm' or "
                         "'llm+spans'")
    if llm and len(generated_queries) != len(doc_texts):
        raise ValueError(f"generated queries for {len(generated_queries)} documents, {len(doc_texts)} documents")
    row_of = {d: i for i, d in enumerate(docids.doc_ids)}
    unknown = [d for _, d in queries if d not in row_of]
    if unknown:
        raise DataError(f"{len(unknown)} training queries name documents outside the corpus, e.g. {unknown[0]!r}")
    retriever = GenerativeRetriever.initialise(docids, config=config, tokenizer=tokenizer, seed=settings.seed)
    model = retriever.model
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    # the indexing inputs and real queries do not change between epochs: tokenize them once
    documents = retriever.prompt_ids([_first_tokens_text(t) for t in doc_texts])
    documents = [ids[: settings.document_tokens + 1] + ids[-1:] if len(ids) > settings.document_tokens + 2 else ids
                 for ids in documents]
    query_prompts = retriever.prompt_ids([q for q, _ in queries])
    query_docs = [row_of[d] for _, d in queries]
    generated: list[tuple[list[int], int]] = []
    if llm:  # fixed texts: tokenized once, like the real queries
        owners = [doc for doc, texts in enumerate(generated_queries) for _ in texts]
        generated = list(zip(retriever.prompt_ids([q for texts in generated_queries for q in texts]), owners))
    per_epoch = len(documents) * (1 + (settings.pseudo_queries if spans else 0)) + len(generated) + len(query_prompts)
    steps_per_epoch = math.ceil(per_epoch / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, int(settings.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    losses: list[float] = []
    epochs_run = 0
    started = time.perf_counter()
    bar = tqdm(total=total, desc="Training genir", unit="step", disable=not settings.show_progress)
    for epoch in range(settings.epochs):
        model.train()
        examples = list(zip(documents, range(len(documents))))
        examples += generated
        if spans:
            texts, owners = [], []
            for doc, text in enumerate(doc_texts):
                for q in pseudo_queries(text, settings.pseudo_queries, settings.span_words, rng):
                    texts.append(q)
                    owners.append(doc)
            examples += list(zip(retriever.prompt_ids(texts), owners))
        examples += list(zip(query_prompts, query_docs))
        for batch in _length_batches(examples, settings.batch_size, rng):
            loss = _batch_loss(retriever, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        epochs_run = epoch + 1
        if on_epoch is not None:
            model.eval()
            on_epoch(epoch + 1, retriever)
        if settings.max_seconds is not None and time.perf_counter() - started > settings.max_seconds:
            break
    bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    retriever.training = {"settings": {**asdict(settings), "span_words": list(settings.span_words)},
                          "training_queries": len(queries), "examples_per_epoch": per_epoch,
                          "generated_pseudo_queries": len(generated) if llm else None,
                          "epochs_run": epochs_run,
                          "steps": len(losses), "seconds": round(seconds, 1),
                          "final_loss": round(sum(losses[-20:]) / max(1, len(losses[-20:])), 4)}
    return GenIRTrainingResult(retriever, len(losses), seconds, per_epoch, epochs_run, losses)


def _length_batches(examples: list, batch_size: int, rng: random.Random) -> list[list]:
    """Shuffled batches of similar-length examples: a pool of 16 batches is sorted by length and cut, then the
    batches are shuffled, so short pseudo-queries are not padded to a document's length."""
    rng.shuffle(examples)
    pool = batch_size * 16
    batches = []
    for start in range(0, len(examples), pool):
        chunk = sorted(examples[start: start + pool], key=lambda e: len(e[0]))
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _first_tokens_text(text: str) -> str:
    # the tokenizer cuts at max_text_tokens; cutting the characters first keeps long documents cheap to tokenize
    return text[:2000]


def _batch_loss(retriever: GenerativeRetriever, batch: list[tuple[list[int], int]]):
    """Teacher-forced cross-entropy of the docid tokens: input ``prompt + docid[:-1]``, targets the docid."""
    import torch

    rows, targets, positions = [], [], []
    for prompt, doc in batch:
        seq = retriever.sequences[doc]
        rows.append(prompt + [retriever.first_docid_token + t for t in seq[:-1]])
        for n, token in enumerate(seq):
            positions.append((len(rows) - 1, len(prompt) - 1 + n))
            targets.append(token)
    width = max(len(r) for r in rows)
    pad = retriever.tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    hidden = retriever.model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    index = torch.tensor(positions)
    logits = retriever.docid_logits(hidden[index[:, 0], index[:, 1]])
    return torch.nn.functional.cross_entropy(logits, torch.tensor(targets))
