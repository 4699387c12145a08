from __future__ import annotations

import json

import numpy as np
import pytest

from flagstone.errors import DataError
from flagstone.models.reranker import CrossEncoderReranker
from flagstone.training.data import TrainingExample
from flagstone.training.loop import TrainingConfig
from flagstone.training.reranker import sample_groups, train_cross_encoder


def _examples():
    from flagstone.corpora import python_docstrings

    _, texts = python_docstrings(120)
    # the positive is the query's own docstring: learnable even for a tiny random model
    return [TrainingExample(t[:40], [t], [texts[(i + k) % len(texts)] for k in (7, 13, 29)])
            for i, t in enumerate(texts[:24])]


def test_groups_have_one_positive_first_and_fixed_size():
    batches = sample_groups(_examples(), group_size=4, batch_size=5, seed=1)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 4]
    for batch in batches:
        for query, texts, teacher in batch:
            assert len(texts) == 4 and teacher is None
    assert sample_groups(_examples(), 4, 5, seed=1) == batches
    with pytest.raises(DataError, match="no negatives"):
        sample_groups([TrainingExample("q", ["p"])], 4, 2, seed=0)


def test_training_lowers_the_loss_and_saves_a_loadable_reranker(tiny_m3_dir, tmp_path):
    # positives share a leading word: a signal a tiny random encoder can learn in a few dozen steps
    examples = [TrainingExample(e.query, ["Return " + e.pos[0][:60]], [n[:60] for n in e.neg]) for e in _examples()]
    config = TrainingConfig(epochs=6, learning_rate=1e-2, warmup_ratio=0.0, show_progress=False)
    result = train_cross_encoder(tiny_m3_dir, examples, tmp_path / "ce", group_size=4, batch_size=4,
                                 max_length=64, config=config)
    assert result.steps == 36
    first, last = np.mean(result.losses[:6]), np.mean(result.losses[-6:])
    assert last < first * 0.8, (first, last)
    reranker = CrossEncoderReranker(tmp_path / "ce", max_length=64)
    ex = examples[0]
    scores = reranker.score_pairs([(ex.query, t) for t in ex.pos + ex.neg])
    assert scores.shape == (4,) and np.isfinite(scores).all()


def test_resumed_training_ends_where_an_uninterrupted_run_ends(tiny_m3_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    config = TrainingConfig(epochs=2, learning_rate=1e-3, checkpoint_every=3, show_progress=False)
    full = train_cross_encoder(tiny_m3_dir, _examples(), tmp_path / "full", group_size=3, batch_size=4,
                               max_length=48, config=config)
    # a run killed during step 4 (its last checkpoint is step 3) is resumed by the same call
    ckpt = tmp_path / "ckpt"

    class Killed(Exception):
        pass

    def kill_at_4(step, loss):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train_cross_encoder(tiny_m3_dir, _examples(), tmp_path / "part", group_size=3, batch_size=4,
                            max_length=48, config=config, checkpoint_dir=ckpt, on_step=kill_at_4)
    assert not (tmp_path / "part").exists()
    from flagstone.models._hf import resolve_precision

    meta = json.loads((ckpt / "trainer_state.json").read_text())
    assert meta["config"]["precision"] == "auto" and meta["precision"] == resolve_precision("auto") == full.precision
    resumed = train_cross_encoder(tiny_m3_dir, _examples(), tmp_path / "resumed", group_size=3, batch_size=4,
                                  max_length=48, config=config, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 3 and resumed.steps == full.steps
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert not (ckpt / "trainer_state.pt").exists()  # a finished run removes its resumable state


def _scored(examples, favour: int):
    """Teacher scores that put negative ``favour`` of each example first and the positive last."""
    return [TrainingExample(e.query, e.pos, e.neg, pos_scores=[-5.0],
                            neg_scores=[5.0 if j == favour else 0.0 for j in range(len(e.neg))]) for e in examples]


def test_groups_carry_the_teachers_scores_of_their_own_texts_and_the_same_draws():
    examples = _scored(_examples(), favour=1)
    plain = sample_groups(examples, 4, 5, seed=3)
    taught = sample_groups(examples, 4, 5, seed=3, with_teacher=True)
    assert [[(q, t) for q, t, _ in b] for b in taught] == [[(q, t) for q, t, _ in b] for b in plain]
    assert all(s is None for b in plain for _, _, s in b)
    by_query = {e.query: e for e in examples}
    for batch in taught:
        for query, texts, scores in batch:
            ex = by_query[query]
            expected = [-5.0] + [ex.neg_scores[ex.neg.index(t)] for t in texts[1:]]
            assert scores == expected
    with pytest.raises(DataError, match="no teacher scores"):
        sample_groups(_examples(), 4, 5, seed=0, with_teacher=True)


def test_listwise_distillation_follows_the_teacher_not_the_labels(tiny_m3_dir, tmp_path):
    # the teacher prefers a negative over the labelled positive: pure distillation must learn the teacher's order,
    # the label loss the opposite one
    examples = [TrainingExample(e.query, ["Return " + e.pos[0][:60]], ["Raise " + n[:60] for n in e.neg])
                for e in _examples()]
    examples = _scored(examples, favour=0)
    config = TrainingConfig(epochs=6, learning_rate=1e-2, warmup_ratio=0.0, show_progress=False)
    margins = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"ce-{weight}"
        train_cross_encoder(tiny_m3_dir, examples, out, group_size=4, batch_size=4, max_length=64, config=config,
                            distill_weight=weight)
        reranker = CrossEncoderReranker(out, max_length=64)
        margins[weight] = np.mean([np.subtract(*reranker.score_pairs([(e.query, e.neg[0]), (e.query, e.pos[0])]))
                                   for e in examples])
    assert margins[1.0] > 0 > margins[0.0], margins
    with pytest.raises(DataError, match="no teacher scores"):
        train_cross_encoder(tiny_m3_dir, _examples(), tmp_path / "x", distill_weight=0.5, config=config)
    with pytest.raises(DataError, match="example #3 has no teacher scores"):  # any example, not only the first
        train_cross_encoder(tiny_m3_dir, examples[:3] + _examples()[3:], tmp_path / "x", distill_weight=0.5,
                            config=config)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="distill_weight"):
        train_cross_encoder(tiny_m3_dir, examples, tmp_path / "y", distill_weight=1.5, config=config)
