"""Cut long text into overlapping chunks by tokens, keeping character positions.

Every chunk knows its document, its place in that document and its character span, so retrieved chunks
can be put back in reading order and mapped onto annotations (e.g. HotpotQA's supporting sentences).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flagstone.errors import IdError, InvalidTextError


@dataclass(frozen=True)
class Chunk:
    id: str  # "<doc id>#<index>"
    doc_id: str
    doc_order: int  # position of the document in the collection
    index: int  # position of the chunk in its document
    text: str
    start: int  # character span in the document text
    end: int

    @property
    def order(self) -> tuple[int, int]:
        """Sort key for reading order across documents."""
        return self.doc_order, self.start


def load_tokenizer(tokenizer: object | str | os.PathLike | None = None):
    """A fast Hugging Face tokenizer (needed for offsets): an instance, a model folder / name, or None for
    the bundled embedder's tokenizer."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    from flagstone.models.embedder import (
        DEFAULT_MODEL,
        transformer_folder,
        resolve_model_path,
    )

    folder, _ = resolve_model_path(str(tokenizer) if tokenizer is not None else DEFAULT_MODEL)
    return AutoTokenizer.from_pretrained(transformer_folder(folder))


def chunk_text(text: str, tokenizer, *, chunk_tokens: int = 200, overlap: int = 32, doc_id: str = "doc",
               doc_order: int = 0) -> list[Chunk]:
    """Chunks of at most ``chunk_tokens`` tokens, each starting ``chunk_tokens - overlap`` tokens after the last.

    A chunk's text is the exact slice of ``text`` its tokens cover (original case and spacing). A chunk end
    is moved back to the last sentence end in its final quarter when there is one, so chunks rarely split
    a sentence; the next chunk still starts by the token stride, so nothing is skipped.
    """
    if chunk_tokens < 2:
        raise ValueError(f"chunk_tokens must be at least 2, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap must be in [0, chunk_tokens), got {overlap}")
    if not isinstance(text, str):
        raise InvalidTextError(f"document {doc_id!r} is {type(text).__name__}, not a string")
    if not text.strip():
        return []
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking needs a fast (Rust) tokenizer for character offsets")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    offsets = [(s, e) for s, e in offsets if e > s]
    if not offsets:
        return []
    chunks: list[Chunk] = []
    stride = chunk_tokens - overlap
    first = 0
    while True:
        last = min(first + chunk_tokens, len(offsets))
        start, end = offsets[first][0], offsets[last - 1][1]
        if last < len(offsets):
            end = _sentence_end(text, start, end, min_end=offsets[first + (3 * (last - first)) // 4][0])
        chunks.append(Chunk(f"{doc_id}#{len(chunks)}", doc_id, doc_order, len(chunks), text[start:end], start, end))
        if last == len(offsets):
            return chunks
        first += stride


def _sentence_end(text: str, start: int, end: int, min_end: int) -> int:
    for at in range(end - 1, max(min_end, start) - 1, -1):
        if text[at] in ".!?\n" and (at + 1 >= len(text) or text[at + 1].isspace()):
            return at + 1
    return end


def chunk_documents(documents: Mapping[str, str] | Sequence[tuple[str, str]], tokenizer=None, *,
                    chunk_tokens: int = 200, overlap: int = 32) -> list[Chunk]:
    """Chunk a collection given as ``{id: text}`` or ``[(id, text), ...]``, in that order."""
    items = list(documents.items()) if isinstance(documents, Mapping) else list(documents)
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidTextError(f"document #{i} is not an (id, text) pair")
        doc_id = item[0]
        if not isinstance(doc_id, str) or not doc_id:
            raise IdError(f"document #{i} has an empty or non-string id")
        if doc_id in seen:
            raise IdError(f"document id {doc_id!r} appears twice")
        seen.add(doc_id)
    tokenizer = load_tokenizer(tokenizer)
    chunks: list[Chunk] = []
    for order, (doc_id, text) in enumerate(items):
        chunks += chunk_text(text, tokenizer, chunk_tokens=chunk_tokens, overlap=overlap, doc_id=doc_id,
                             doc_order=order)
    return chunks


def in_reading_order(chunks: Sequence[Chunk]) -> list[Chunk]:
    return sorted(chunks, key=lambda c: c.order)
