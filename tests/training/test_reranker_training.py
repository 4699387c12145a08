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
        for query, texts in batch:
            assert len(texts) == 4
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
