"""Decoder embedders (Qwen3-Embedding, gte-Qwen2, e5-mistral, bge-en-icl): last-token pooling over left-padded
batches, the end token appended, and their query instruction formats; on tiny random Qwen2 / Qwen3 checkpoints."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.embedder import Embedder
from flagstone.models.presets import PRESETS, find_preset
from tests.helpers import build_tiny_decoder_embedder

TASK = "Given a web search query, retrieve relevant passages that answer the query"
TEXTS = [
    "open a file and read it line by line",
    "x",
    "compress the data with zlib; the level sets the trade-off between speed and size",
    "what is a socket",
    "Return the sum of two numbers.",
]


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def decoder(request, tmp_path_factory):
    folder = build_tiny_decoder_embedder(tmp_path_factory.mktemp(f"tiny-{request.param}") / "model",
                                         arch=request.param)
    return Embedder(str(folder), pooling="last_token", end_token="<|endoftext|>", query_instruction=TASK,
                    query_instruction_format="Instruct: {}\nQuery:{}", max_batch_tokens=None, show_progress=False)


def test_presets_for_decoder_embedders():
    qwen3 = find_preset("Qwen/Qwen3-Embedding-0.6B")
    assert qwen3 is not None and qwen3.name == "qwen3-embedding-0.6b"
    assert qwen3.pooling == "last_token" and qwen3.end_token == "<|endoftext|>" and qwen3.normalize
    assert qwen3.query_instruction_format.format(TASK, "q") == f"Instruct: {TASK}\nQuery:q"
    assert {"qwen3-embedding-4b", "qwen3-embedding-8b"} <= set(PRESETS)
    e5 = PRESETS["e5-mistral-7b-instruct"]
    assert e5.hub_id == "intfloat/e5-mistral-7b-instruct" and e5.pooling == "last_token" and e5.end_token == "</s>"
    assert e5.query_instruction_format.format(TASK, "q") == f"Instruct: {TASK}\nQuery: q"
    icl = PRESETS["bge-en-icl"]
    assert icl.hub_id == "BAAI/bge-en-icl" and icl.pooling == "last_token"
    assert icl.query_instruction_format.format("task", "q") == "<instruct>task\n<query>q\n<response>"


def test_left_padding_and_the_end_token(decoder):
    assert decoder.padding_side == "left"
    ids = decoder.tokenize(TEXTS)
    end = decoder.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert all(row[-1] == end and row.count(end) == 1 for row in ids)  # appended once
    assert decoder.tokenize(["x<|endoftext|>"])[0].count(end) == 1  # not again when the text already ends with it
    cut = decoder.tokenize([TEXTS[2]], max_length=6)[0]
    assert len(cut) == 6 and cut[-1] == end  # truncation keeps room for it
    input_ids, mask = decoder.pad(ids)
    short = ids[1]
    assert mask[1].tolist() == [0] * (mask.shape[1] - len(short)) + [1] * len(short)
    assert input_ids[1, -len(short):].tolist() == short


def test_last_token_pooling_equals_each_text_alone(decoder):
    import torch

    batch = decoder.encode(TEXTS, batch_size=len(TEXTS)).dense
    alone = np.stack([decoder.encode([t]).dense[0] for t in TEXTS])
    assert np.abs(batch - alone).max() < 1e-5
    # by hand: the normalised state of the last token (the end token) of the unpadded text
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ids = torch.tensor([decoder.tokenize([text])[0]])
            state = decoder.model(input_ids=ids).last_hidden_state[0, -1]
            expected = torch.nn.functional.normalize(state, dim=-1).numpy()
            assert np.abs(batch[i] - expected).max() < 1e-5
    # the order of the batch does not matter
    order = [3, 0, 4, 2, 1]
    shuffled = decoder.encode([TEXTS[i] for i in order], batch_size=len(TEXTS)).dense
    assert np.abs(shuffled - batch[order]).max() < 1e-5


def test_query_instruction_format(decoder):
    queries = ["how do I read a file", "what is zlib"]
    formatted = [f"Instruct: {TASK}\nQuery:{q}" for q in queries]
    assert decoder.tokenize(queries, is_query=True) == decoder.tokenize(formatted)
    assert np.abs(decoder.encode_queries(queries).dense - decoder.encode(formatted).dense).max() < 1e-6
    # documents go in as they are
    assert np.abs(decoder.encode_corpus(queries).dense - decoder.encode(queries).dense).max() < 1e-6
    assert decoder.cache_key(["dense"], True) != decoder.cache_key(["dense"], False)


def test_an_end_token_outside_the_vocabulary_is_refused(decoder):
    from flagstone.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not a token"):
        Embedder(str(decoder.path), pooling="last_token", end_token="</s>", show_progress=False)
