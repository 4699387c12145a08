from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flagstone.models.embedder import Embedder
from flagstone.training.cocktail import (
    IncompatibleModelsError,
    cocktail_weights,
    example_loss,
    merge_models,
    mix_models,
)
from flagstone.training.data import TrainingExample
from tests.helpers import build_tiny_causal_lm, build_tiny_m3


@pytest.fixture(scope="module")
def two_m3(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocktail")
    return build_tiny_m3(root / "a", seed=1), build_tiny_m3(root / "b", seed=2)


def test_merge_is_the_exact_weighted_average(two_m3, tmp_path):
    a, b = two_m3
    out = merge_models([a, b], [1, 3], tmp_path / "merged")  # normalised to 0.25 / 0.75
    sa, sb, sm = (load_file(f / "model.safetensors") for f in (a, b, out))
    for key in sa:
        if sa[key].is_floating_point():
            torch.testing.assert_close(sm[key], (0.25 * sa[key].double() + 0.75 * sb[key].double()).float(),
                                       atol=1e-7, rtol=0)
        else:
            assert torch.equal(sm[key], sa[key])
    for head in ("sparse_linear.pt", "colbert_linear.pt"):
        ha, hb, hm = (torch.load(f / head, weights_only=True) for f in (a, b, out))
        torch.testing.assert_close(hm["weight"], 0.25 * ha["weight"] + 0.75 * hb["weight"])
    assert json.loads((out / "merge.json").read_text())["weights"] == [0.25, 0.75]
    merged = Embedder(str(out), show_progress=False)  # loads like any M3 folder
    assert merged.has_sparse and merged.has_colbert


def test_merging_a_model_with_itself_changes_nothing(two_m3, tmp_path):
    a, _ = two_m3
    out = merge_models([a, a], [0.5, 0.5], tmp_path / "same")
    texts = ["read a file", "compress bytes"]
    np.testing.assert_allclose(Embedder(str(out), show_progress=False).encode(texts).dense,
                               Embedder(str(a), show_progress=False).encode(texts).dense, atol=1e-6)


def test_mismatched_architectures_are_refused(two_m3, tmp_path):
    a, _ = two_m3
    bigger = build_tiny_m3(tmp_path / "bigger", hidden=48)
    with pytest.raises(IncompatibleModelsError, match="hidden_size differs"):
        merge_models([a, bigger], [0.5, 0.5], tmp_path / "nope")
    lm = build_tiny_causal_lm(tmp_path / "lm")
    with pytest.raises(IncompatibleModelsError, match="differs"):
        merge_models([a, lm], [0.5, 0.5], tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    with pytest.raises(ValueError, match="weights"):
        merge_models([a, a], [0.5], tmp_path / "nope")


def test_weights_are_softmax_of_negative_loss():
    w = cocktail_weights([1.0, 2.0, 4.0], temperature=2.0)
    expected = np.exp([-0.5, -1.0, -2.0]) / np.exp([-0.5, -1.0, -2.0]).sum()
    np.testing.assert_allclose(w, expected)
    assert cocktail_weights([3.0, 3.0]) == pytest.approx([0.5, 0.5])


def test_mix_models_computes_weights_from_examples(two_m3, tmp_path):
    a, b = two_m3
    examples = [TrainingExample("read a file", ["Open the file and read its lines."],
                                ["Compress bytes with zlib.", "Return the absolute value."])]
    out, weights = mix_models([a, b], tmp_path / "mixed", examples=examples, temperature=1.0)
    expected = cocktail_weights([example_loss(a, examples, "embedder"), example_loss(b, examples, "embedder")], 1.0)
    assert weights == pytest.approx(expected)
    assert json.loads((out / "merge.json").read_text())["weights"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="either weights or examples"):
        mix_models([a, b], tmp_path / "x")


def test_causal_lm_loss_and_merge(tmp_path):
    a = build_tiny_causal_lm(tmp_path / "lm-a", seed=1)
    b = build_tiny_causal_lm(tmp_path / "lm-b", seed=2)
    examples = [{"input": "Question: what is two plus two? Answer:", "output": " four"}]
    out, weights = mix_models([a, b], tmp_path / "lm-mixed", examples=examples, kind="causal_lm")
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)
    from flagstone.models.causal_lm import load_causal_lm

    assert load_causal_lm(out).model.config.model_type == "llama"


def test_integer_buffers_stored_by_only_some_checkpoints_are_left_to_the_loader():
    from flagstone.training.cocktail import merge_state_dicts

    a = {"w": torch.ones(2), "position_ids": torch.arange(4)}
    b = {"w": torch.zeros(2)}
    merged = merge_state_dicts([a, b], [0.5, 0.5])
    assert set(merged) == {"w"} and torch.equal(merged["w"], torch.full((2,), 0.5))
    with pytest.raises(IncompatibleModelsError, match="different parameters"):
        merge_state_dicts([a, {"v": torch.zeros(2)}], [0.5, 0.5])
