"""In-context examples (bge-en-icl): few-shot (instruction, query, response) blocks written before a query in the
model's example format, never before a document; checked on a tiny random Qwen2 checkpoint against the prompt
written out by hand the way FlagEmbedding's ICL embedder builds it."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import FlagstoneError, InvalidExampleError, InvalidTextError
from flagstone.models.embedder import Embedder
from flagstone.models.incontext import QueryExample
from flagstone.models.presets import PRESETS
from tests.helpers import _tiny_qwen_config, build_tiny_decoder_embedder, load_flagembedding, tiny_qwen_tokenizer

TASK = "Given a web search query, retrieve relevant passages that answer the query."
CODE_TASK = "Given a question, retrieve code that answers it"
EXAMPLES = [
    {"instruct": CODE_TASK, "query": "how to read a file", "response": "with open(path) as f: data = f.read()"},
    QueryExample("compress bytes", "zlib.compress(data, level=9)"),  # no instruction: the embedder's
]
# FlagEmbedding's ICL prompt for the query "what is a socket", written out: each example as
# <instruct>..\n<query>..\n<response>.. followed by a blank line, then the query with an open response
EXAMPLES_TEXT = (f"<instruct>{CODE_TASK}\n<query>how to read a file\n<response>with open(path) as f: data = f.read()"
                 f"\n\n<instruct>{TASK}\n<query>compress bytes\n<response>zlib.compress(data, level=9)\n\n")
QUERY_TEXT = f"<instruct>{TASK}\n<query>what is a socket\n<response>"
DOCS = ["A socket is one endpoint of a two-way link between two programs.", "zlib compresses bytes."]
END = "<|endoftext|>"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_decoder_embedder(tmp_path_factory.mktemp("tiny-icl") / "model", arch="qwen2")


def _icl(folder, **kwargs) -> Embedder:
    """The tiny decoder set up as the bge-en-icl preset sets up its model (with the tiny tokenizer's end token)."""
    preset = PRESETS["bge-en-icl"]
    settings = {"pooling": "last_token", "end_token": END, "query_instruction": TASK,
                "query_instruction_format": preset.query_instruction_format, "example_format": preset.example_format,
                "max_batch_tokens": None, "show_progress": False}
    return Embedder(str(folder), **{**settings, **kwargs})


@pytest.fixture(scope="module")
def icl(folder):
    return _icl(folder)


@pytest.fixture(scope="module")
def icl_with_examples(folder):
    return _icl(folder, query_examples=EXAMPLES)


def test_the_preset_carries_bge_en_icl_s_example_format():
    preset = PRESETS["bge-en-icl"]
    assert preset.example_format.format("i", "q", "r") == "<instruct>i\n<query>q\n<response>r"
    assert all(p.example_format is None for name, p in PRESETS.items() if name != "bge-en-icl")


def test_the_prompt_is_flagembedding_s_token_for_token(icl):
    end = icl.tokenizer.convert_tokens_to_ids(END)
    ids = icl.tokenize(["what is a socket"], is_query=True, examples=EXAMPLES)[0]
    assert ids == icl.tokenizer(EXAMPLES_TEXT + QUERY_TEXT)["input_ids"] + [end]
    assert icl.text_template(is_query=True, examples=EXAMPLES) == (
        EXAMPLES_TEXT + f"<instruct>{TASK}\n<query>", "\n<response>")


def test_query_vectors_are_the_last_token_of_the_prompt(icl):
    import torch

    queries = ["what is a socket", "read a file line by line"]
    with_examples = icl.encode_queries(queries, examples=EXAMPLES).dense
    prompts = [EXAMPLES_TEXT + f"<instruct>{TASK}\n<query>{q}\n<response>" for q in queries]
    assert np.abs(with_examples - icl.encode(prompts).dense).max() < 1e-6  # the same text, encoded as it is
    with torch.no_grad():
        ids = torch.tensor([icl.tokenize(["what is a socket"], is_query=True, examples=EXAMPLES)[0]])
        state = icl.model(input_ids=ids).last_hidden_state[0, -1]
    assert np.abs(with_examples[0] - torch.nn.functional.normalize(state, dim=-1).numpy()).max() < 1e-5
    assert np.abs(with_examples - icl.encode_queries(queries).dense).max() > 1e-3  # the examples matter


def test_documents_get_no_examples(icl, icl_with_examples):
    assert icl_with_examples.tokenize(DOCS) == icl.tokenize(DOCS)
    assert all("<instruct>" not in icl.tokenizer.decode(row) for row in icl_with_examples.tokenize(DOCS))
    assert np.abs(icl_with_examples.encode_corpus(DOCS).dense - icl.encode(DOCS).dense).max() < 1e-6
    assert icl_with_examples.cache_key(["dense"], False) == icl.cache_key(["dense"], False)
    with pytest.raises(InvalidExampleError, match="before queries only"):
        icl.encode(DOCS, examples=EXAMPLES)


def test_constructor_examples_and_per_call_examples(icl, icl_with_examples):
    queries = ["what is a socket"]
    assert icl_with_examples.settings.query_examples == EXAMPLES_TEXT
    assert icl_with_examples.tokenize(queries, is_query=True) == icl.tokenize(queries, is_query=True,
                                                                            examples=EXAMPLES)
    assert np.abs(icl_with_examples.encode_queries(queries).dense
                  - icl.encode_queries(queries, examples=EXAMPLES).dense).max() < 1e-6
    # this call's examples beat the embedder's: [] means none
    assert np.abs(icl_with_examples.encode_queries(queries, examples=[]).dense
                  - icl.encode_queries(queries).dense).max() < 1e-6
    assert icl_with_examples.cache_key(["dense"], True) != icl.cache_key(["dense"], True)
    # a prompt replaces the query format, examples included
    assert icl_with_examples.tokenize(queries, is_query=True, prompt="q: ") == icl.tokenize(["q: " + queries[0]])


def test_a_long_query_is_cut_before_its_suffix(icl):
    long_query = " ".join(["socket"] * 60)
    limit = len(icl.tokenize(["x"], is_query=True)[0]) + 8  # room for some of the query
    alone = icl.tokenize([long_query], is_query=True, max_length=limit)[0]
    # cut inside the query, as FlagEmbedding cuts: the format's "\n<response>" and the end token stay
    assert len(alone) == limit and icl.tokenizer.decode(alone).endswith(" socket\n<response>" + END)
    assert icl.tokenizer.decode(alone).startswith(f"<instruct>{TASK}\n<query>socket socket")
    # a document has no suffix: cut at the end as before, the end token last
    doc = icl.tokenize([long_query], max_length=12)[0]
    assert doc == icl.tokenizer(long_query)["input_ids"][:11] + [icl.tokenizer.convert_tokens_to_ids(END)]
    with pytest.raises(InvalidTextError, match=f"more than max_length={limit}"):
        icl.tokenize([long_query], is_query=True, max_length=limit, truncate=False)


def test_examples_do_not_count_against_max_length(icl):
    long_query = " ".join(["socket"] * 60)
    limit = len(icl.tokenize(["x"], is_query=True)[0]) + 8
    alone = icl.tokenize([long_query], is_query=True, max_length=limit)[0]
    with_examples = icl.tokenize([long_query], is_query=True, max_length=limit, examples=EXAMPLES)[0]
    examples_ids = icl.tokenizer(EXAMPLES_TEXT, add_special_tokens=False)["input_ids"]
    assert len(alone) == limit
    assert with_examples == examples_ids + alone  # the query keeps its whole budget after the examples


@pytest.fixture(scope="module")
def mistral_like(tmp_path_factory):
    """A tiny random Qwen2 whose tokenizer wraps every text in <s> ... </s>, as bge-en-icl's (Mistral's) does."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("tiny-mistral-like") / "model"
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in ("<s>", "</s>")])
    tokenizer.save_pretrained(folder)
    torch.manual_seed(1)
    AutoModel.from_config(_tiny_qwen_config("qwen2", tokenizer)).eval().save_pretrained(folder)
    return folder


def test_equals_flagembedding_s_icl_embedder(mistral_like):
    icl_class = load_flagembedding("inference.embedder.decoder_only.icl", "ICLLLMEmbedder")
    if icl_class is None:
        pytest.skip("FlagEmbedding is not installed (pip install flagembedding)")
    examples = [{"instruct": CODE_TASK, "query": "how to read a file", "response": "with open(path) as f: f.read()"},
                {"query": "compress bytes", "response": "zlib.compress(data, level=9)"}]
    reference = icl_class(str(mistral_like), query_instruction_for_retrieval=TASK, examples_for_task=examples,
                          normalize_embeddings=True, use_fp16=False, devices="cpu")
    preset = PRESETS["bge-en-icl"]
    ours = Embedder(str(mistral_like), pooling=preset.pooling, end_token=preset.end_token, query_instruction=TASK,
                    query_instruction_format=preset.query_instruction_format, example_format=preset.example_format,
                    query_examples=examples, show_progress=False)
    queries = ["what is a socket", "x", " ".join(["compress the bytes of a socket stream"] * 12)]
    for max_length in (512, 24):  # 24: the long query is cut, before the suffix
        expected = reference.encode_queries(queries, max_length=max_length, batch_size=4)
        assert np.abs(ours.encode_queries(queries, max_length=max_length).dense - expected).max() < 1e-5
    assert np.abs(ours.encode_corpus(DOCS).dense - reference.encode_corpus(DOCS, max_length=512)).max() < 1e-5


def test_the_pool_passes_examples_on(icl, icl_with_examples):
    queries = ["what is a socket", "compress a list of bytes", "x"]
    with icl_with_examples.pool(processes=2) as pool:
        default = pool.encode_queries(queries)  # the workers were built with the embedder's examples
        none = pool.encode_queries(queries, examples=[])
        with pytest.raises(InvalidExampleError, match="is empty"):
            pool.encode_queries(queries, examples=[{"query": "", "response": "r"}])
    assert np.abs(default.dense - icl.encode_queries(queries, examples=EXAMPLES).dense).max() < 1e-6
    assert np.abs(none.dense - icl.encode_queries(queries).dense).max() < 1e-6


@pytest.mark.parametrize("examples, message", [
    ("how to read a file", "must be a list of QueryExample or dicts, got str"),
    ({"query": "q", "response": "r"}, "must be a list of QueryExample or dicts, got dict"),
    (["q"], "example #0 is str, not a QueryExample or a dict"),
    ([{"query": "q", "response": "r", "instruction": "i"}], "example #0 has unknown key(s) ['instruction']"),
    ([{"query": "q", "response": "r"}, {"query": "q"}], "example #1 has no 'response'"),
    ([{"query": "  ", "response": "r"}], "example #0: query is empty"),
    ([QueryExample("q", "r", instruction="")], "example #0: instruction is empty"),
    ([{"query": 3, "response": "r"}], "example #0: query is int, not a string"),
])
def test_malformed_examples_are_one_line_errors(icl, examples, message):
    with pytest.raises(InvalidExampleError) as caught:
        icl.encode_queries(["q"], examples=examples)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, FlagstoneError)
    with pytest.raises(InvalidExampleError, match="example|examples"):
        _icl(icl.path, query_examples=examples)


def test_examples_where_they_do_not_apply(icl, folder):
    plain = Embedder(str(folder), pooling="last_token", end_token=END, query_instruction=TASK, show_progress=False)
    with pytest.raises(InvalidExampleError, match="has no example_format"):
        plain.encode_queries(["q"], examples=EXAMPLES)
    with pytest.raises(InvalidExampleError, match="has no example_format"):
        Embedder(str(folder), pooling="last_token", end_token=END, query_examples=EXAMPLES, show_progress=False)
    assert plain.encode_queries(["q"], examples=[]).dense.shape == (1, plain.dim)  # none asked, none needed
    with pytest.raises(InvalidExampleError, match="examples or a prompt, not both"):
        icl.encode_queries(["q"], examples=EXAMPLES, prompt="query: ")
    with pytest.raises(InvalidExampleError, match="three {} fields"):
        Embedder(str(folder), pooling="last_token", end_token=END, example_format="<q>{}\n<r>{}", show_progress=False)
    no_instruction = _icl(folder, query_instruction="")
    with pytest.raises(InvalidExampleError, match="example #1 has no instruction"):
        no_instruction.encode_queries(["q"], examples=EXAMPLES)
