"""The call surface of sentence-transformers and FlagEmbedding on Embedder.encode, checked against
sentence-transformers itself where it defines the behaviour (quantisation, Matryoshka truncation, prompts,
similarity)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flagstone.models.embedder import Embedder
from flagstone.models.embeddings import Embeddings
from flagstone.models.quantization import quantize_embeddings

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Semantic search finds documents by meaning rather than by exact words.",
    "Zinc lozenges shorten colds.",
    "A socket is one endpoint of a two-way link between programs.",
    "Ünïcödé text and numbers 12345.",
    "Compress the bytes with zlib.",
]


@pytest.fixture(scope="module")
def st_model(minilm):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm.path), device="cpu")


def _st_quantize():
    quantization = pytest.importorskip("sentence_transformers.util.quantization")
    return quantization.quantize_embeddings


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_equals_sentence_transformers(precision):
    reference = _st_quantize()
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 70)).astype(np.float32)  # 70 bits: the last byte is padded
    embeddings[:, 3] = 0.25  # a constant dimension: an empty range
    calibration = rng.normal(scale=2.0, size=(200, 70)).astype(np.float32)
    ours = quantize_embeddings(embeddings, precision)
    theirs = reference(embeddings, precision=precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    calibrated = quantize_embeddings(embeddings, precision, calibration_embeddings=calibration)
    assert np.array_equal(calibrated, reference(embeddings, precision=precision, calibration_embeddings=calibration))
    if precision in ("int8", "uint8"):
        ranges = np.stack([calibration.min(0), calibration.max(0)])
        assert np.array_equal(quantize_embeddings(embeddings, precision, ranges=ranges), calibrated)
        with pytest.raises(ValueError, match="two calibration"):
            quantize_embeddings(embeddings[:1], precision)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_encode_precision_equals_sentence_transformers(minilm, st_model, precision):
    ours = minilm.encode(TEXTS, precision=precision)
    theirs = st_model.encode(TEXTS, precision=precision, batch_size=4)
    assert isinstance(ours, Embeddings) and ours.dense.dtype == theirs.dtype and ours.dense.shape == theirs.shape
    # the floats agree to ~1e-7; an int8 bucket edge may fall either side of that, so allow one step there
    assert np.abs(ours.dense.astype(np.int16) - theirs.astype(np.int16)).max() <= (1 if "int8" in precision else 0)
    floats = minilm.encode(TEXTS).dense
    assert np.array_equal(ours.dense, quantize_embeddings(floats, precision))
    calibration = minilm.encode(TEXTS[::-1] + ["one more calibration text", "and another"]).dense
    assert np.array_equal(minilm.encode(TEXTS[:2], precision=precision, calibration_embeddings=calibration).dense,
                          quantize_embeddings(minilm.encode(TEXTS[:2]).dense, precision,
                                              calibration_embeddings=calibration))


def test_truncate_dim_equals_sentence_transformers(minilm, st_model):
    ours = minilm.encode(TEXTS, truncate_dim=128).dense
    theirs = st_model.encode(TEXTS, truncate_dim=128, normalize_embeddings=True, batch_size=4)
    assert ours.shape == (len(TEXTS), 128)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # re-normalised after the cut
    full = minilm.encode(TEXTS).dense
    raw = minilm.encode(TEXTS, truncate_dim=128, normalize=False).dense
    unnormalised = minilm.encode(TEXTS, normalize=False).dense
    assert np.abs(raw - unnormalised[:, :128]).max() < 1e-6  # no normalisation asked: the plain cut
    assert not np.allclose(np.linalg.norm(unnormalised, axis=1), 1.0, atol=1e-3)
    assert np.abs(unnormalised / np.linalg.norm(unnormalised, axis=1, keepdims=True) - full).max() < 1e-5
    # truncation with quantisation: cut first, then quantise (as sentence-transformers)
    assert np.array_equal(minilm.encode(TEXTS, truncate_dim=64, precision="ubinary").dense,
                          quantize_embeddings(minilm.encode(TEXTS, truncate_dim=64).dense, "ubinary"))


def test_output_torch_and_one_string(minilm):
    import torch

    as_numpy = minilm.encode(TEXTS)
    as_torch = minilm.encode(TEXTS, output="torch")
    assert isinstance(as_torch, Embeddings) and isinstance(as_torch.dense, torch.Tensor)
    assert as_torch.dense.dtype == torch.float32 and as_torch.dense.device.type == "cpu"
    assert np.array_equal(as_torch.dense.numpy(), as_numpy.dense)
    quantised = minilm.encode(TEXTS, output="torch", precision="int8")
    assert quantised.dense.dtype == torch.int8
    one = minilm.encode(TEXTS[0], output="torch")
    assert one.dense.shape == (1, 384) and len(one) == 1


def test_per_call_options_beat_the_constructor(minilm, tiny_m3_dir):
    short = Embedder(str(minilm.path), max_length=8, batch_size=1, show_progress=False)
    assert np.abs(minilm.encode(TEXTS, max_length=8).dense - short.encode(TEXTS).dense).max() < 1e-6
    assert np.abs(short.encode(TEXTS, max_length=256, batch_size=3).dense - minilm.encode(TEXTS).dense).max() < 1e-5
    assert len(minilm.tokenize([TEXTS[1]], max_length=5)[0]) == 5
    with pytest.raises(ValueError, match="model's limit 512"):
        minilm.encode(TEXTS, max_length=513)
    with pytest.raises(ValueError, match="batch_size"):
        minilm.encode(TEXTS, batch_size=0)
    m3 = Embedder(str(tiny_m3_dir), show_progress=False)
    raw = m3.encode(TEXTS[:3], colbert=True, normalize=False)
    assert not np.allclose(np.linalg.norm(raw.colbert[0], axis=1), 1.0, atol=1e-3)  # ColBERT vectors too
    normed = m3.encode(TEXTS[:3], colbert=True)
    assert np.allclose(raw.colbert[0] / np.linalg.norm(raw.colbert[0], axis=1, keepdims=True), normed.colbert[0],
                       atol=1e-5)


def test_dense_shaping_options_are_checked(minilm, tiny_m3):
    with pytest.raises(ValueError, match="precision must be one of"):
        minilm.encode(TEXTS, precision="int4")
    with pytest.raises(ValueError, match="output must be one of"):
        minilm.encode(TEXTS, output="jax")
    with pytest.raises(ValueError, match="truncate_dim must be"):
        minilm.encode(TEXTS, truncate_dim=385)
    with pytest.raises(ValueError, match="dense vectors only"):
        tiny_m3.encode(TEXTS, colbert=True, precision="int8")
    with pytest.raises(ValueError, match="dense vectors only"):
        tiny_m3.encode(TEXTS, dense=False, sparse=True, output="torch")
    with pytest.raises(ValueError, match="two calibration"):
        minilm.encode(TEXTS[0], precision="int8")  # one vector cannot set the int8 ranges by itself


@pytest.fixture(scope="module")
def prompted_dir(minilm, tmp_path_factory):
    """The bundled MiniLM with sentence-transformers prompts, a default prompt and dot-product similarity."""
    folder = tmp_path_factory.mktemp("prompted") / "minilm"
    shutil.copytree(minilm.path, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(minilm.path / "model.safetensors")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config.update(prompts={"query": "query: ", "document": "passage: ", "classification": "classify: "},
                  similarity_fn_name="dot")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


def test_prompts_from_the_model_folder_equal_sentence_transformers(prompted_dir, minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(prompted_dir), device="cpu")
    embedder = Embedder(str(prompted_dir), show_progress=False)
    assert embedder.prompts["classification"] == "classify: "
    for name in ("query", "document", "classification"):
        ours = embedder.encode(TEXTS, prompt_name=name).dense
        assert np.abs(ours - reference.encode(TEXTS, prompt_name=name, batch_size=4)).max() < 1e-5, name
    assert np.abs(embedder.encode(TEXTS, prompt="topic: ").dense
                  - reference.encode(TEXTS, prompt="topic: ", batch_size=4)).max() < 1e-5
    # queries and documents take the folder's "query" and "document" prompts, as encode_query/encode_document do
    assert np.abs(embedder.encode_queries(TEXTS).dense - reference.encode_query(TEXTS, batch_size=4)).max() < 1e-5
    assert np.abs(embedder.encode_corpus(TEXTS).dense - reference.encode_document(TEXTS, batch_size=4)).max() < 1e-5
    assert np.abs(embedder.encode_documents(TEXTS).dense - minilm.encode(["passage: " + t for t in TEXTS]).dense
                  ).max() < 1e-6
    with pytest.raises(ValueError, match="not one of this model's prompts"):
        embedder.encode(TEXTS, prompt_name="nope")
    with pytest.raises(ValueError, match="not both"):
        embedder.encode(TEXTS, prompt="a", prompt_name="query")
    # the prompt is part of the cache key
    assert embedder.cache_key(["dense"], False) != Embedder(str(minilm.path), show_progress=False).cache_key(
        ["dense"], False)


def test_similarity_as_sentence_transformers(prompted_dir, minilm, st_model):
    import torch

    a, b = minilm.encode(TEXTS[:3]), minilm.encode(TEXTS[3:])
    expected = st_model.similarity(a.dense, b.dense).numpy()
    assert minilm.similarity_fn_name == "cosine"
    assert np.abs(minilm.similarity(a, b) - expected).max() < 1e-6
    assert np.abs(minilm.similarity(torch.from_numpy(a.dense), b.dense[0]) - expected[:, :1]).max() < 1e-6
    dot_model = Embedder(str(prompted_dir), show_progress=False)
    assert dot_model.similarity_fn_name == "dot"
    raw = dot_model.encode(TEXTS[:3], normalize=False).dense
    assert np.abs(dot_model.similarity(raw, raw) - raw @ raw.T).max() < 1e-4
    st = pytest.importorskip("sentence_transformers")
    for function in ("euclidean", "manhattan"):
        from flagstone.models.embedder import similarity_matrix

        reference = st.SentenceTransformer(str(minilm.path), device="cpu", similarity_fn_name=function)
        flipped = np.ascontiguousarray(raw[::-1])
        assert np.abs(similarity_matrix(raw, flipped, function) - reference.similarity(raw, flipped).numpy()).max() < 1e-4


def test_query_and_passage_instructions_as_flagembedding_names_them(minilm):
    embedder = Embedder(str(minilm.path), query_instruction="find the passage", passage_instruction="passage: ",
                        query_instruction_format="<instruct>{}\n<query>{}\n<response>", show_progress=False)
    q = embedder.encode_queries(TEXTS[:2]).dense
    expected = minilm.encode([f"<instruct>find the passage\n<query>{t}\n<response>" for t in TEXTS[:2]]).dense
    assert np.abs(q - expected).max() < 1e-6
    assert embedder.text_template(is_query=True) == ("<instruct>find the passage\n<query>", "\n<response>")
    d = embedder.encode_corpus(TEXTS[:2]).dense
    assert np.abs(d - minilm.encode(["passage: " + t for t in TEXTS[:2]]).dense).max() < 1e-6
    assert np.abs(embedder.encode_queries(TEXTS[:2], prompt="").dense - minilm.encode(TEXTS[:2]).dense).max() < 1e-6
    with pytest.raises(ValueError, match="two {} fields"):
        Embedder(str(minilm.path), query_instruction_format="{}", show_progress=False)


def test_pool_of_two_processes_equals_one_process(tiny_m3):
    texts = [" ".join(["word"] * n) + f" text {n}" for n in (3, 40, 7, 90, 1, 25, 12, 60, 5)]
    single = tiny_m3.encode(texts, dense=True, sparse=True, colbert=True)
    single_int8 = tiny_m3.encode(texts, precision="int8")
    with tiny_m3.pool(processes=2) as pool:
        pooled = pool.encode(texts, dense=True, sparse=True, colbert=True, chunk_size=2)
        pooled_int8 = pool.encode(texts, precision="int8")  # ranges over all texts, not per chunk
        queries = pool.encode_queries(texts[:3])
        with pytest.raises(ValueError, match="dense vectors only"):
            pool.encode(texts, colbert=True, precision="int8")
    assert isinstance(pooled, Embeddings) and len(pooled) == len(texts)
    assert np.abs(pooled.dense - single.dense).max() < 1e-6
    assert np.array_equal(pooled.sparse.indptr, single.sparse.indptr)
    assert np.array_equal(pooled.sparse.token_ids, single.sparse.token_ids)
    assert np.abs(pooled.sparse.weights - single.sparse.weights).max() < 1e-6
    assert np.array_equal(pooled.colbert.offsets, single.colbert.offsets)
    assert np.abs(pooled.colbert.vectors - single.colbert.vectors).max() < 1e-6
    assert np.abs(pooled_int8.dense.astype(int) - single_int8.dense.astype(int)).max() <= 1
    assert np.abs(queries.dense - tiny_m3.encode_queries(texts[:3]).dense).max() < 1e-6
