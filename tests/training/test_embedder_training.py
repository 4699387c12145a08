from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.embedder import Embedder
from flagstone.training.data import TrainingExample
from flagstone.training.embedder import EmbedderTrainingSettings, train_embedder
from flagstone.training.loop import TrainingConfig
from tests.helpers import load_flagembedding_m3


def _examples(n=24):
    from flagstone.corpora import python_docstrings

    _, texts = python_docstrings(150)
    # the positive starts with a word no negative has: a signal a tiny random encoder can learn quickly
    return [TrainingExample(t[:40], ["Return " + t[:80]], [texts[(i + k) % len(texts)][:80] for k in (7, 13, 29)])
            for i, t in enumerate(texts[:n])]


def _train(base, out, heads, steps_epochs=6, **kw):
    settings = EmbedderTrainingSettings(heads=heads, group_size=4, batch_size=4, query_max_length=32,
                                        passage_max_length=48, temperature=0.05, **kw)
    config = TrainingConfig(epochs=steps_epochs, learning_rate=5e-3, warmup_ratio=0.0, show_progress=False)
    return train_embedder(base, _examples(), out, settings=settings, config=config)


def _group_loss(embedder: Embedder, mode: str = "dense") -> float:
    """Mean InfoNCE of the training groups (positive first) at temperature 0.05, without dropout."""
    from flagstone.models.scoring import score_pairs

    losses = []
    for ex in _examples():
        texts = ex.pos + ex.neg
        q = embedder.encode([ex.query] * len(texts), dense=mode == "dense", sparse=mode == "sparse", is_query=True)
        d = embedder.encode(texts, dense=mode == "dense", sparse=mode == "sparse")
        s = getattr(score_pairs(q, d), mode) / 0.05
        losses.append(np.log(np.exp(s - s.max()).sum()) + s.max() - s[0])
    return float(np.mean(losses))


def test_dense_training_lowers_the_loss_and_saves_an_embedder(tiny_m3_dir, tmp_path):
    # mean pooling: a random tiny encoder's CLS vector barely depends on the text, its token average does
    base = Embedder(str(tiny_m3_dir), pooling="mean", show_progress=False)
    before = _group_loss(base)
    result = _train(base, tmp_path / "dense", ("dense",))
    assert result.steps == 36
    trained = Embedder(str(tmp_path / "dense"), show_progress=False)
    assert _group_loss(trained) < 0.5 * before
    fresh = Embedder(str(tiny_m3_dir), pooling="mean", show_progress=False)  # `base` was trained in place
    assert trained.settings == fresh.settings  # pooling, normalisation, lengths recorded in the folder
    texts = ["Return the sum of two numbers", "a quick check"]
    np.testing.assert_allclose(trained.encode(texts).dense, base.encode(texts).dense, atol=1e-5)
    assert not np.allclose(trained.encode(texts).dense, fresh.encode(texts).dense, atol=1e-4)


def test_m3_unified_training_saves_heads_that_flagembedding_loads(tiny_m3_dir, tmp_path):
    base = Embedder(str(tiny_m3_dir), show_progress=False)
    before = _group_loss(base, "sparse")
    _train(base, tmp_path / "m3", ("dense", "sparse", "colbert"))
    ours = Embedder(str(tmp_path / "m3"), show_progress=False)
    assert _group_loss(ours, "sparse") < before
    assert ours.has_sparse and ours.has_colbert
    texts = ["Return the sum of two numbers", "open a file and read it"]
    mine = ours.encode(texts, dense=True, sparse=True, colbert=True)
    m3_class = load_flagembedding_m3()
    if m3_class is None:
        pytest.skip("FlagEmbedding is not installed")
    ref = m3_class(str(tmp_path / "m3"), use_fp16=False, devices="cpu", normalize_embeddings=True,
                   query_max_length=126, passage_max_length=126)
    out = ref.encode(texts, batch_size=2, max_length=ours.settings.max_length, return_dense=True,
                     return_sparse=True, return_colbert_vecs=True)
    assert np.abs(out["dense_vecs"] - mine.dense).max() < 1e-5
    for i, weights in enumerate(out["lexical_weights"]):
        row = mine.sparse.row(i)
        assert {int(t) for t in weights} == set(row)
        assert all(abs(row[int(t)] - float(w)) < 1e-5 for t, w in weights.items())
    for i, vecs in enumerate(out["colbert_vecs"]):
        assert np.abs(mine.colbert[i] - vecs).max() < 1e-5


def test_sparse_only_training_on_a_frozen_encoder_changes_only_the_sparse_head(tiny_m3_dir, tmp_path):
    import torch

    _train(str(tiny_m3_dir), tmp_path / "sparse", ("sparse",), steps_epochs=2, freeze_encoder=True)
    before = torch.load(tiny_m3_dir / "sparse_linear.pt", weights_only=True)
    after = torch.load(tmp_path / "sparse" / "sparse_linear.pt", weights_only=True)
    assert not torch.allclose(before["weight"], after["weight"])
    base, trained = Embedder(str(tiny_m3_dir), show_progress=False), Embedder(str(tmp_path / "sparse"),
                                                                              show_progress=False)
    texts = ["Return the sum of two numbers"]
    np.testing.assert_allclose(trained.encode(texts).dense, base.encode(texts).dense, atol=1e-6)
    colbert_before = torch.load(tiny_m3_dir / "colbert_linear.pt", weights_only=True)
    colbert_after = torch.load(tmp_path / "sparse" / "colbert_linear.pt", weights_only=True)
    assert torch.equal(colbert_before["weight"], colbert_after["weight"])


def test_distillation_uses_teacher_scores(tiny_m3_dir, tmp_path):
    examples = [TrainingExample(ex.query, ex.pos, ex.neg, [3.0], [1.0, 0.5, 0.0]) for ex in _examples()]
    settings = EmbedderTrainingSettings(group_size=4, batch_size=4, query_max_length=32, passage_max_length=48,
                                        in_batch_negatives=False)
    config = TrainingConfig(epochs=1, learning_rate=1e-3, show_progress=False, max_steps=2)
    result = train_embedder(str(tiny_m3_dir), examples, tmp_path / "kd", settings=settings, config=config)
    # with soft targets the loss is bounded below by the teacher's entropy, not by zero
    probs = np.exp([3.0, 1.0, 0.5, 0.0]) / np.exp([3.0, 1.0, 0.5, 0.0]).sum()
    entropy = -(probs * np.log(probs)).sum()
    assert all(loss >= entropy - 1e-4 for loss in result.losses)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="heads"):
        EmbedderTrainingSettings(heads=("dense", "splade"))
    with pytest.raises(ValueError, match="group_size"):
        EmbedderTrainingSettings(group_size=1)


def _without_heads(tiny_m3_dir, folder):
    import shutil

    shutil.copytree(tiny_m3_dir, folder)
    for name in ("sparse_linear.pt", "colbert_linear.pt"):
        (folder / name).unlink()
    return folder


def test_a_new_sparse_head_starts_from_idf(tiny_m3_dir, tmp_path):
    from flagstone.corpora import python_docstrings
    from flagstone.training.embedder import idf_sparse_head

    embedder = Embedder(str(_without_heads(tiny_m3_dir, tmp_path / "dense-only")), show_progress=False)
    assert not embedder.has_sparse
    _, texts = python_docstrings(200)
    passages = [f"the value {t}" for t in texts]  # "the" and "value" are in every passage: idf near zero
    embedder.sparse_head = idf_sparse_head(embedder, passages, scale=0.1, max_length=48)
    weights = embedder.encode(passages[:20], dense=False, sparse=True).sparse
    common = {i for w in ("the", "value") for i in embedder.tokenizer(w, add_special_tokens=False)["input_ids"]}
    common_w = [w for i in range(20) for t, w in weights.row(i).items() if t in common]
    other_w = [w for i in range(20) for t, w in weights.row(i).items() if t not in common]
    assert common_w and other_w
    assert np.mean(common_w) < 0.75 * np.mean(other_w)  # a 32-wide random encoder fits IDF only roughly
    assert 0.05 < np.mean(other_w) < 0.4  # about scale * sqrt(idf)


def test_m3_training_from_a_dense_only_model_saves_an_idf_initialised_sparse_head(tiny_m3_dir, tmp_path):
    import torch

    folder = _without_heads(tiny_m3_dir, tmp_path / "dense-only")
    _train(str(folder), tmp_path / "idf", ("dense", "sparse"), steps_epochs=1)
    _train(str(folder), tmp_path / "uniform", ("dense", "sparse"), steps_epochs=1, sparse_init="uniform")
    idf = torch.load(tmp_path / "idf" / "sparse_linear.pt", weights_only=True)
    uniform = torch.load(tmp_path / "uniform" / "sparse_linear.pt", weights_only=True)
    assert idf["weight"].shape == uniform["weight"].shape == (1, 32)
    # the uniform start is bias 1 with tiny weights; six steps cannot move it near the IDF fit
    assert float(uniform["bias"]) > 0.9 and abs(float(idf["bias"]) - float(uniform["bias"])) > 0.3
    assert not (tmp_path / "idf" / "colbert_linear.pt").exists()
    with pytest.raises(ValueError, match="sparse_init"):
        EmbedderTrainingSettings(sparse_init="bm25")


def test_flops_penalty_is_the_squared_mean_weight_summed_over_terms():
    import torch

    from flagstone.training.embedder import flops_penalty

    weights = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    assert float(flops_penalty(weights)) == pytest.approx(2.0 ** 2 + 0.0 + 1.0 ** 2)


def _active_terms(embedder: Embedder) -> float:
    texts = [t for ex in _examples() for t in ex.pos + ex.neg]
    sparse = embedder.encode(texts, dense=False, sparse=True).sparse
    return float(np.mean([len(sparse.row(i)) for i in range(len(texts))]))


def test_the_flops_regulariser_makes_sparse_weights_sparser(tiny_m3_dir, tmp_path):
    # the same sparse-only training with and without the regulariser: it must leave fewer active terms
    _train(str(tiny_m3_dir), tmp_path / "plain", ("sparse",), steps_epochs=2, freeze_encoder=True)
    _train(str(tiny_m3_dir), tmp_path / "flops", ("sparse",), steps_epochs=2, freeze_encoder=True,
           flops_weights=(0.0, 1.0))
    plain = _active_terms(Embedder(str(tmp_path / "plain"), show_progress=False))
    regularised = _active_terms(Embedder(str(tmp_path / "flops"), show_progress=False))
    assert regularised < 0.8 * plain


def test_flops_weights_are_checked():
    with pytest.raises(ValueError, match="sparse head"):
        EmbedderTrainingSettings(heads=("dense",), flops_weights=(1e-4, 1e-4))
    with pytest.raises(ValueError, match="non-negative"):
        EmbedderTrainingSettings(heads=("sparse",), flops_weights=(-1.0, 0.0))
