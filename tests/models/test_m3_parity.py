"""Flagstone's M3 outputs and scores equal FlagEmbedding's BGEM3FlagModel on the same (tiny, random) weights."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.scoring import colbert_scores, score_pairs, sparse_scores
from tests.helpers import load_flagembedding_m3

QUERIES = ["how do I read a file line by line", "compress data", "what is a socket"]
DOCS = [
    "Open the file and iterate over it; each iteration yields one line including the newline.",
    "Compress the bytes with zlib and return the compressed data; level sets the trade-off.",
    "A socket is one endpoint of a two-way communication link between two programs over a network. " * 3,
]


@pytest.fixture(scope="module")
def reference(tiny_m3_dir):
    m3_class = load_flagembedding_m3()
    if m3_class is None:
        pytest.skip("FlagEmbedding is not installed (pip install flagembedding)")
    return m3_class(str(tiny_m3_dir), use_fp16=False, devices="cpu", normalize_embeddings=True,
                    query_max_length=126, passage_max_length=126)


def _encode_both(reference, tiny_m3, texts, is_query):
    ref = reference.encode(texts, batch_size=2, max_length=tiny_m3.settings.max_length, return_dense=True,
                           return_sparse=True, return_colbert_vecs=True)
    ours = tiny_m3.encode(texts, dense=True, sparse=True, colbert=True, is_query=is_query)
    return ref, ours


def test_outputs_equal_flagembedding(reference, tiny_m3):
    assert tiny_m3.has_sparse and tiny_m3.has_colbert
    ref, ours = _encode_both(reference, tiny_m3, QUERIES + DOCS, is_query=False)
    assert np.abs(ref["dense_vecs"] - ours.dense).max() < 1e-5
    for i in range(len(ref["lexical_weights"])):
        mine = tiny_m3.lexical_tokens(ours.sparse.row(i))
        theirs = reference.convert_id_to_token(ref["lexical_weights"][i])
        assert set(mine) == set(theirs)
        assert all(mine[t] >= float(w) - 1e-6 for t, w in theirs.items())
    for i, ref_weights in enumerate(ref["lexical_weights"]):
        mine = ours.sparse.row(i)
        assert set(mine) == {int(t) for t in ref_weights}
        for token, w in ref_weights.items():
            assert abs(mine[int(token)] - float(w)) < 1e-5
    for i, ref_vecs in enumerate(ref["colbert_vecs"]):
        assert ours.colbert[i].shape == ref_vecs.shape
        assert np.abs(ours.colbert[i] - ref_vecs).max() < 1e-5


def test_scores_equal_flagembedding(reference, tiny_m3, tiny_m3_dir):
    q_ref, q = _encode_both(reference, tiny_m3, QUERIES, is_query=True)
    d_ref, d = _encode_both(reference, tiny_m3, DOCS, is_query=False)
    lexical = sparse_scores(q.sparse, d.sparse)
    late = colbert_scores(q.colbert, d.colbert)
    for i in range(len(QUERIES)):
        for j in range(len(DOCS)):
            ref_lex = reference.compute_lexical_matching_score(q_ref["lexical_weights"][i], d_ref["lexical_weights"][j])
            assert abs(lexical[i, j] - ref_lex) < 1e-5
            ref_col = float(reference.colbert_score(q_ref["colbert_vecs"][i], d_ref["colbert_vecs"][j]))
            assert abs(late[i, j] - ref_col) < 1e-5
    # pairwise scores in every mode and the weighted combination, against compute_score (one pair per batch,
    # so FlagEmbedding does not pad ColBERT vectors)
    weights = [0.4, 0.2, 0.4]
    ref_pairs = reference.compute_score(list(zip(QUERIES, DOCS)), batch_size=1, max_query_length=126,
                                        max_passage_length=126, weights_for_different_modes=weights)
    pairs = score_pairs(q, d)
    for name in ("dense", "sparse", "colbert"):
        assert np.abs(getattr(pairs, name) - np.asarray(ref_pairs[name])).max() < 1e-5, name
    combined = pairs.combined({"dense": 0.4, "sparse": 0.2, "colbert": 0.4})
    assert np.abs(combined - np.asarray(ref_pairs["colbert+sparse+dense"])).max() < 1e-5
    sparse_dense = pairs.combined({"dense": 0.4, "sparse": 0.2})
    assert np.abs(sparse_dense - np.asarray(ref_pairs["sparse+dense"])).max() < 1e-5


def test_colbert_head_with_its_own_dimension(tmp_path):
    from flagstone.models.embedder import Embedder
    from tests.helpers import build_tiny_m3

    folder = build_tiny_m3(tmp_path / "m3-dim16", colbert_dim=16)
    emb = Embedder(str(folder), show_progress=False).encode(["a short text"], colbert=True, dense=False)
    assert emb.dense is None and emb.colbert.dim == 16


def test_truncation_matches_flagembedding(reference, tiny_m3_dir):
    from flagstone.models.embedder import Embedder

    short = Embedder(str(tiny_m3_dir), max_length=24, show_progress=False)
    long_text = DOCS[2]
    ref = reference.encode([long_text], max_length=24, return_dense=True, return_colbert_vecs=True)
    ours = short.encode([long_text], colbert=True)
    assert ours.colbert[0].shape[0] == 23  # 24 tokens minus the CLS position
    assert np.abs(ref["dense_vecs"] - ours.dense).max() < 1e-5
    assert np.abs(ref["colbert_vecs"][0] - ours.colbert[0]).max() < 1e-5


def _m3_by_formula(folder, texts, max_length):
    """BGE-M3's outputs computed from the checkpoint's parts by hand, as BGEM3FlagModel defines them: dense = the
    normalised CLS state; sparse = relu(sparse_linear(h)) per token, the largest per token id, CLS/EOS/PAD/UNK
    dropped, zeros left out; ColBERT = colbert_linear(h) of every token after CLS, normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    heads = {}
    for name in ("sparse_linear", "colbert_linear"):
        state = torch.load(folder / f"{name}.pt", weights_only=True)
        heads[name] = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        heads[name].load_state_dict(state)
    dropped = {tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[k])
               for k in ("cls_token", "eos_token", "pad_token", "unk_token") if k in tokenizer.special_tokens_map}
    dense, sparse, colbert = [], [], []
    with torch.no_grad():
        for text in texts:  # one text at a time: no padding at all
            ids = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**ids).last_hidden_state[0]
            dense.append(torch.nn.functional.normalize(h[0], dim=-1).numpy())
            weights = torch.relu(heads["sparse_linear"](h)).squeeze(-1).numpy()
            row: dict[int, float] = {}
            for token, w in zip(ids["input_ids"][0].tolist(), weights):
                if token not in dropped and w > 0:
                    row[token] = max(row.get(token, 0.0), float(w))
            sparse.append(row)
            colbert.append(torch.nn.functional.normalize(heads["colbert_linear"](h[1:]), dim=-1).numpy())
    return np.stack(dense), sparse, colbert, dropped


@pytest.mark.parametrize("layout", ["xlm-roberta", "bert"])
def test_outputs_equal_the_m3_formula(layout, tiny_m3_dir, tmp_path):
    from flagstone.models.embedder import Embedder
    from tests.helpers import build_tiny_bert_m3

    folder = tiny_m3_dir if layout == "xlm-roberta" else build_tiny_bert_m3(tmp_path / "bert-m3")
    embedder = Embedder(str(folder), show_progress=False)
    assert embedder.settings.pooling == "cls" and embedder.settings.normalize  # BGEM3FlagModel's defaults
    texts = QUERIES + DOCS + ["the the the file file"]  # repeated tokens keep their largest weight
    dense, sparse, colbert, dropped = _m3_by_formula(folder, texts, embedder.settings.max_length)
    assert set(embedder.special_token_ids.tolist()) == dropped
    if layout == "bert":  # [SEP] is no EOS here: FlagEmbedding keeps its weight, so Flagstone does too
        assert embedder.tokenizer.sep_token_id not in dropped
    ours = embedder.encode(texts, dense=True, sparse=True, colbert=True)
    assert np.abs(ours.dense - dense).max() < 1e-5
    for i, row in enumerate(sparse):
        mine = ours.sparse.row(i)
        assert set(mine) == set(row), i
        assert max((abs(mine[t] - w) for t, w in row.items()), default=0.0) < 1e-5
        assert ours.colbert[i].shape == colbert[i].shape
        assert np.abs(ours.colbert[i] - colbert[i]).max() < 1e-5
    sep = embedder.tokenizer.sep_token_id
    kept_sep = any(sep in row for row in sparse)
    assert kept_sep == (layout == "bert")  # with random weights [SEP] weighs > 0 in some text


def test_bert_layout_equals_flagembedding(tmp_path):
    """Where [SEP] is not EOS, BGEM3FlagModel keeps [SEP]'s weight; so does Flagstone (it used to drop it)."""
    from flagstone.models.embedder import Embedder
    from tests.helpers import build_tiny_bert_m3

    m3_class = load_flagembedding_m3()
    if m3_class is None:
        pytest.skip("FlagEmbedding is not installed (pip install flagembedding)")
    folder = build_tiny_bert_m3(tmp_path / "bert-m3")
    reference = m3_class(str(folder), use_fp16=False, devices="cpu")
    ours = Embedder(str(folder), show_progress=False)
    texts = QUERIES + DOCS
    ref = reference.encode(texts, batch_size=2, max_length=ours.settings.max_length, return_dense=True,
                           return_sparse=True, return_colbert_vecs=True)
    mine = ours.encode(texts, dense=True, sparse=True, colbert=True)
    assert np.abs(ref["dense_vecs"] - mine.dense).max() < 1e-5
    for i, ref_weights in enumerate(ref["lexical_weights"]):
        row = mine.sparse.row(i)
        assert set(row) == {int(t) for t in ref_weights}, i
        assert max((abs(row[int(t)] - float(w)) for t, w in ref_weights.items()), default=0.0) < 1e-5
        assert np.abs(mine.colbert[i] - ref["colbert_vecs"][i]).max() < 1e-5
