from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import InvalidTextError, MissingHeadError, ModelNotFoundError
from flagstone.models.embedder import Embedder, resolve_model_path
from flagstone.models.embeddings import Embeddings
from flagstone.models.presets import PRESETS, find_preset

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Semantic search finds documents by meaning rather than by exact words.",
    "x",
    "Zinc supplementation reduces the duration of the common cold in children. " * 40,  # > 256 tokens
    "Ünïcödé text, emojis 🙂 and numbers 12345 are all encoded.",
]


def test_minilm_equals_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm.path), device="cpu")
    expected = reference.encode(TEXTS, batch_size=2, convert_to_numpy=True)
    ours = minilm.encode(TEXTS)
    assert ours.dense.shape == (len(TEXTS), 384)
    assert np.abs(ours.dense - expected).max() < 1e-5
    # result order follows the input, whatever the batch size and length sorting
    one_by_one = np.stack([minilm.encode([t]).dense[0] for t in TEXTS])
    assert np.abs(one_by_one - ours.dense).max() < 1e-5


def test_bundled_preset_settings(minilm):
    assert minilm.name == "all-MiniLM-L6-v2"
    assert minilm.settings.pooling == "mean" and minilm.settings.normalize
    assert minilm.settings.max_length == 256
    assert minilm.available_outputs == ("dense",)
    assert np.allclose(np.linalg.norm(minilm.encode(TEXTS[:2]).dense, axis=1), 1.0, atol=1e-5)


def test_one_result_type_whatever_the_flags(tiny_m3):
    for flags in ({"dense": True}, {"dense": False, "sparse": True}, {"dense": False, "colbert": True},
                  {"dense": True, "sparse": True, "colbert": True}):
        out = tiny_m3.encode(TEXTS[:3], **flags)
        assert isinstance(out, Embeddings)
        assert len(out) == 3
        assert set(out.outputs) == {k for k, v in flags.items() if v}


def test_query_instruction_is_prepended_to_queries_only(minilm):
    instructed = Embedder(str(minilm.path), pooling="mean", normalize=True, max_length=256,
                          query_instruction="query: ", show_progress=False)
    q = instructed.encode_queries(["zinc and colds"]).dense
    d = instructed.encode_documents(["zinc and colds"]).dense
    assert np.abs(q - minilm.encode(["query: zinc and colds"]).dense).max() < 1e-6
    assert np.abs(d - minilm.encode(["zinc and colds"]).dense).max() < 1e-6


def test_presets_know_the_bge_family():
    for name in ("bge-small-en-v1.5", "bge-base-en-v1.5", "bge-large-en-v1.5", "bge-small-zh-v1.5",
                 "bge-base-zh-v1.5", "bge-large-zh-v1.5", "bge-m3"):
        assert name in PRESETS
    assert find_preset("BAAI/bge-m3").name == "bge-m3"
    assert find_preset("BAAI/BGE-SMALL-EN-V1.5").pooling == "cls"
    assert PRESETS["bge-base-en-v1.5"].query_instruction.startswith("Represent this sentence")
    assert PRESETS["bge-m3"].max_length == 8192


def test_folder_settings_come_from_sentence_transformers_files(minilm):
    plain = Embedder(str(minilm.path), show_progress=False)  # a folder, not the preset name
    assert plain.settings.pooling == "mean" and plain.settings.normalize and plain.settings.max_length == 256


def test_bad_inputs_raise_clear_errors(minilm, tiny_m3):
    with pytest.raises(InvalidTextError, match="#1 is empty"):  # queries; an empty document is encoded
        minilm.encode(["fine", "   "], is_query=True)
    with pytest.raises(InvalidTextError, match="not a string"):
        minilm.encode(["fine", None])
    one = minilm.encode("one text, not a list")  # a single string is one text: one row
    assert one.dense.shape == (1, 384)
    assert np.array_equal(one.dense, minilm.encode(["one text, not a list"]).dense)
    with pytest.raises(InvalidTextError, match="no texts"):
        minilm.encode([])
    with pytest.raises(InvalidTextError, match="more than max_length=256"):
        minilm.encode([TEXTS[3]], truncate=False)
    with pytest.raises(MissingHeadError, match="sparse_linear.pt"):
        minilm.encode(["text"], sparse=True)
    with pytest.raises(MissingHeadError, match="colbert_linear.pt"):
        minilm.encode(["text"], colbert=True)
    assert minilm.count_truncated(TEXTS) == 1


def test_unknown_models_raise_model_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'"):
        resolve_model_path("no-such-model")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="could not download"):
        resolve_model_path("some-org/not-a-real-model-xyz")


def test_cache_key_changes_with_settings(minilm, tiny_m3):
    assert minilm.cache_key(["dense"], False) != minilm.cache_key(["dense"], True) or \
        not minilm.settings.query_instruction
    assert minilm.cache_key(["dense"], False) != tiny_m3.cache_key(["dense"], False)
    assert tiny_m3.cache_key(["dense"], False) != tiny_m3.cache_key(["dense", "sparse"], False)


def test_sentence_transformers_folder_with_transformer_subfolder(minilm, tmp_path):
    import json
    import shutil

    root = tmp_path / "st-model"
    shutil.copytree(minilm.path, root / "0_Transformer")
    shutil.move(str(root / "0_Transformer" / "1_Pooling"), root / "1_Pooling")
    shutil.move(str(root / "0_Transformer" / "modules.json"), root / "modules.json")
    modules = json.loads((root / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (root / "modules.json").write_text(json.dumps(modules))
    nested = Embedder(str(root), show_progress=False)
    assert nested.path == root / "0_Transformer" and nested.settings.pooling == "mean"
    assert np.abs(nested.encode(TEXTS[:2]).dense - minilm.encode(TEXTS[:2]).dense).max() < 1e-6


def test_length_batches_cap_padded_tokens():
    from flagstone.models.embedder import length_batches

    lengths = [300, 200, 50, 50, 10]  # sorted longest first, as encode sorts them
    assert length_batches(lengths, 32, 400) == [(0, 1), (1, 3), (3, 5)]
    assert length_batches(lengths, 2, None) == [(0, 2), (2, 4), (4, 5)]
    assert length_batches(lengths, 32, 100) == [(0, 1), (1, 2), (2, 4), (4, 5)]  # never an empty batch
    assert length_batches([], 32, 100) == []


def test_token_budget_changes_batches_not_results(tiny_m3_dir):
    texts = [" ".join(["word"] * n) for n in (3, 40, 7, 90, 1, 25)]
    unlimited = Embedder(str(tiny_m3_dir), max_batch_tokens=None, show_progress=False)
    budget = Embedder(str(tiny_m3_dir), max_batch_tokens=64, show_progress=False)
    a = unlimited.encode(texts, dense=True, sparse=True, colbert=True)
    b = budget.encode(texts, dense=True, sparse=True, colbert=True)
    assert np.allclose(a.dense, b.dense, atol=1e-5)
    for i in range(len(texts)):
        assert np.allclose(a.colbert[i], b.colbert[i], atol=1e-5)
    assert Embedder(str(tiny_m3_dir), show_progress=False).max_batch_tokens == 1024  # "auto" on CPU
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Embedder(str(tiny_m3_dir), max_batch_tokens=0)


def test_tokenize_is_what_encode_feeds_the_model(tiny_m3_dir, monkeypatch):
    embedder = Embedder(str(tiny_m3_dir), query_instruction="query: ", show_progress=False)
    texts = ["Return the sum of two numbers", "open a file"]
    ids = embedder.tokenize(texts)
    assert ids == embedder.tokenizer(texts, truncation=True, max_length=embedder.settings.max_length)["input_ids"]
    assert embedder.tokenize(texts, is_query=True) == embedder.tokenize(["query: " + t for t in texts])
    short = embedder.tokenize([" ".join(["word"] * 50)], max_length=6)[0]
    assert len(short) == 6 and short[-1] == embedder.tokenizer.eos_token_id
    with pytest.raises(InvalidTextError, match="more than max_length"):
        embedder.tokenize([" ".join(["word"] * 50)], max_length=6, truncate=False)
    with pytest.raises(InvalidTextError, match="single string"):
        embedder.tokenize("one text")
    assert embedder.tokenize([]) == []

    input_ids, mask = embedder.pad(ids)
    assert input_ids.shape == mask.shape == (2, max(len(i) for i in ids))
    assert input_ids[1, : len(ids[1])].tolist() == ids[1] and mask[1].tolist() == [1] * len(ids[1]) + [0] * (
        input_ids.shape[1] - len(ids[1]))  # right padding, whatever the tokenizer's padding side
    assert set(input_ids[1, len(ids[1]):].tolist()) <= {embedder.tokenizer.pad_token_id}

    calls = []
    original = embedder.tokenize
    monkeypatch.setattr(embedder, "tokenize", lambda t, **kw: calls.append(kw) or original(t, **kw))
    embedder.encode_queries(texts[:1])
    assert len(calls) == 1 and calls[0]["is_query"] is True and calls[0]["truncate"] is True


def test_forward_returns_differentiable_head_outputs(tiny_m3):
    input_ids, mask = tiny_m3.pad(tiny_m3.tokenize(["Return the sum of two numbers", "x"]))
    out = tiny_m3.forward(input_ids, mask, dense=True, sparse=True, colbert=True)
    assert out.dense.shape == (2, tiny_m3.dim) and out.sparse.shape == input_ids.shape
    assert out.colbert.shape[:2] == (2, input_ids.shape[1] - 1)
    enc = tiny_m3.encode(["Return the sum of two numbers", "x"])
    assert np.abs(out.dense.detach().numpy() - enc.dense).max() < 1e-6
    assert out.dense.requires_grad  # outside inference_mode training can use it as is
