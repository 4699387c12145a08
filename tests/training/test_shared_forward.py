"""Inference (Embedder.encode) and training (the trainable's outputs) run one forward: same inputs, same outputs."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.embedder import Embedder
from flagstone.training.embedder import EmbedderTrainingSettings, _Trainable

TEXTS = ["Return the sum of two numbers.", "open a file and read it line by line", "x",
         "Parse the configuration file and return a dict of its sections and their keys."]


@pytest.mark.parametrize("pooling", ["cls", "mean", "last_token"])
def test_training_and_inference_outputs_match(tiny_m3_dir, pooling):
    import torch

    inference = Embedder(str(tiny_m3_dir), pooling=pooling, show_progress=False)
    expected = inference.encode(TEXTS, dense=True, sparse=True, colbert=True)
    trained = Embedder(str(tiny_m3_dir), pooling=pooling, show_progress=False)  # _Trainable takes it over
    trainable = _Trainable(trained, EmbedderTrainingSettings(heads=("dense", "sparse", "colbert")))
    trainable.module.eval()  # no dropout: the comparison is about the computation, not the noise
    out = trainable.outputs(TEXTS, inference.settings.max_length)
    assert out["dense"].requires_grad and out["sparse"].requires_grad and out["colbert"].requires_grad

    np.testing.assert_allclose(out["dense"].detach().numpy(), expected.dense, atol=1e-6)
    sparse = out["sparse"].detach().numpy()
    for i in range(len(TEXTS)):
        row = expected.sparse.row(i)
        assert set(np.flatnonzero(sparse[i])) == set(row)
        np.testing.assert_allclose([sparse[i, t] for t in row], list(row.values()), atol=1e-6)
        real = int(out["colbert_mask"][i].sum())
        np.testing.assert_allclose(out["colbert"][i, :real].detach().numpy(), expected.colbert[i], atol=1e-6)
        assert torch.all(out["colbert"][i, real:] == 0)


def test_training_tokenises_like_inference(tiny_m3_dir, monkeypatch):
    embedder = Embedder(str(tiny_m3_dir), show_progress=False)
    trainable = _Trainable(embedder, EmbedderTrainingSettings(heads=("dense",)))
    seen = []
    original = embedder.tokenize

    def spy(texts, **options):
        seen.append((list(texts), options))
        return original(texts, **options)

    monkeypatch.setattr(embedder, "tokenize", spy)
    trainable.outputs(TEXTS[:2], 16)
    assert seen == [(TEXTS[:2], {"max_length": 16})]
