from __future__ import annotations

import itertools

import pytest

from flagstone.errors import IdError, InvalidTextError
from flagstone.rag.chunking import (
    chunk_documents,
    chunk_text,
    in_reading_order,
    load_tokenizer,
)

TEXT = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(60))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def token_count(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_chunks_are_exact_slices_within_the_token_limit(tokenizer):
    chunks = chunk_text(TEXT, tokenizer, chunk_tokens=40, overlap=8, doc_id="d")
    assert len(chunks) > 5
    for i, c in enumerate(chunks):
        assert c.text == TEXT[c.start:c.end]
        assert token_count(tokenizer, c.text) <= 40
        assert (c.id, c.index, c.doc_id) == (f"d#{i}", i, "d")
    # consecutive chunks overlap or touch: no text is skipped
    for a, b in itertools.pairwise(chunks):
        assert b.start <= a.end
    assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)


def test_chunk_ends_prefer_sentence_boundaries(tokenizer):
    chunks = chunk_text(TEXT, tokenizer, chunk_tokens=40, overlap=8)
    assert all(c.text.endswith(".") for c in chunks)


def test_overlap_repeats_tokens(tokenizer):
    no_overlap = chunk_text(TEXT, tokenizer, chunk_tokens=40, overlap=0)
    overlapping = chunk_text(TEXT, tokenizer, chunk_tokens=40, overlap=20)
    assert len(overlapping) > len(no_overlap)


def test_short_and_empty_texts(tokenizer):
    (only,) = chunk_text("One short sentence.", tokenizer, chunk_tokens=40, overlap=8)
    assert only.text == "One short sentence."
    assert chunk_text("   ", tokenizer) == []


def test_bad_settings_and_inputs(tokenizer):
    with pytest.raises(ValueError):
        chunk_text(TEXT, tokenizer, chunk_tokens=10, overlap=10)
    with pytest.raises(ValueError):
        chunk_text(TEXT, tokenizer, chunk_tokens=1, overlap=0)
    with pytest.raises(InvalidTextError):
        chunk_text(None, tokenizer)  # type: ignore[arg-type]
    with pytest.raises(IdError):
        chunk_documents([("a", "x"), ("a", "y")], tokenizer)
    with pytest.raises(IdError):
        chunk_documents([("", "x")], tokenizer)
    with pytest.raises(InvalidTextError):
        chunk_documents(["just a string"], tokenizer)


def test_reading_order_across_documents(tokenizer):
    chunks = chunk_documents({"b": TEXT, "a": "Alpha. " * 50}, tokenizer, chunk_tokens=30, overlap=0)
    assert [c.doc_order for c in chunks] == sorted(c.doc_order for c in chunks)
    shuffled = list(reversed(chunks))
    assert in_reading_order(shuffled) == chunks
    assert {c.doc_id for c in chunks if c.doc_order == 0} == {"b"}
