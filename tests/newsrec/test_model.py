"""The news recommenders: GateFormer's gate keeps exactly the top-k tokens, SFI selects the k most relevant
history items and encodes only those, training lowers the loss, and a saved model scores the same."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flagstone.errors import DataError
from flagstone.newsrec.model import NEG, NewsRecModel, gate_top_k, select_history
from flagstone.newsrec.recommender import NewsRecommender, collate, history_rows
from flagstone.newsrec.settings import NewsRecConfig, NewsRecTraining
from flagstone.newsrec.synthetic import SyntheticMindConfig, generate_mind
from flagstone.newsrec.text import TokenTable, Vocabulary

TINY = dict(dim=32, heads=2, layers=1, ff_dim=64, max_history=12, dropout=0.0)


@pytest.fixture(scope="module")
def data():
    return generate_mind(SyntheticMindConfig(n_users=60, news_per_day=40, history_news=120, train_impressions=240,
                                             dev_impressions=40, history_length=(3, 12), candidates=(4, 10), seed=1))


def test_gate_keeps_exactly_the_top_k_tokens_in_order():
    tokens = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [4, 3, 0, 0, 0, 0, 0]])
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5, NEG, NEG], [1.0, 2.0, NEG, NEG, NEG, NEG, NEG]])
    kept, positions, kept_logits = gate_top_k(tokens, logits, 3)
    assert kept.tolist() == [[6, 8, 9], [4, 3, 0]]  # a short title keeps all it has
    assert positions.tolist()[0] == [1, 3, 4]
    assert kept_logits[0].tolist() == [3.0, 2.0, 0.5]


def test_gated_model_encodes_fewer_tokens_and_ignores_the_dropped_ones(data):
    torch.manual_seed(0)
    base = NewsRecommender(NewsRecModel(500, NewsRecConfig(kind="base", **TINY)), None)
    gated = NewsRecModel(500, NewsRecConfig(kind="gateformer", gate_k=3, **TINY)).eval()
    table = TokenTable(data.dev.news, Vocabulary.build(n.title for n in data.train.news.values()), 20)
    imp = data.dev.impressions[0]
    rows = [(history_rows(imp, table, 12), table.rows(imp.candidates))]
    inputs = collate(rows, table.tokens, 12)
    hist_tokens = (inputs[0] != 0).sum(-1)[inputs[1]]
    cand_tokens = int((inputs[2] != 0).sum())
    with torch.no_grad():
        full = base.model.eval()(*inputs)
        out = gated(*inputs)
    assert full.tokens_encoded == int(hist_tokens.sum()) + cand_tokens
    assert out.tokens_encoded == int(hist_tokens.clamp(max=3).sum()) + cand_tokens < full.tokens_encoded
    # a token the gate drops changes nothing (as long as the gate keeps the same positions: its convolution
    # sees neighbours); a kept one changes the scores
    history = inputs[0]
    title = history[0, 0]

    def kept(t):
        return gate_top_k(t[None], gated.gate(t[None]), 3)[1][0].tolist()

    with torch.no_grad():
        kept_at = kept(title)
        tried = 0
        for position in [i for i in range(int((title != 0).sum())) if i not in kept_at]:
            for replacement in range(2, 40):
                changed = history.clone()
                changed[0, 0, position] = replacement
                if replacement == title[position] or kept(changed[0, 0]) != kept_at:
                    continue
                tried += 1
                assert torch.allclose(gated(changed, *inputs[1:]).scores, out.scores, atol=1e-5)
        assert tried > 10
        changed = history.clone()
        changed[0, 0, kept_at[0]] = 1 if title[kept_at[0]] != 1 else 2
        assert not torch.allclose(gated(changed, *inputs[1:]).scores, out.scores, atol=1e-3)


def test_sfi_selects_the_k_most_relevant_history_items():
    history = torch.eye(5)[None]  # five orthogonal items; the last one is padding
    mask = torch.tensor([[True, True, True, True, False]])
    candidates = torch.tensor([[[0.1, 0.9, 0.5, 0.0, 5.0], [0.0, 0.0, 0.2, 0.3, 0.0]]])
    top, valid = select_history(candidates, history, mask, torch.tensor([[True, True]]), k=2)
    assert set(top[0, 0].tolist()) == {1, 2} and valid[0, 0].all()  # item 4 scores 5.0 but is padding
    assert set(top[0, 1].tolist()) == {3, 2}
    top, valid = select_history(candidates, history, mask, torch.tensor([[True, True]]), k=5)
    assert valid[0].sum(-1).tolist() == [4, 4]  # only four real items to select


def test_sfi_encodes_only_the_selected_items(data):
    vocab = Vocabulary.build(n.title for n in data.train.news.values())
    table = TokenTable(data.dev.news, vocab, 20)
    torch.manual_seed(0)
    imps = [imp for imp in data.dev.impressions if len(imp.history) >= 8][:6]
    # 1 to 3 candidates each: the padding candidates select nothing
    rows = [(history_rows(imp, table, 12), table.rows(imp.candidates[:1 + i % 3])) for i, imp in enumerate(imps)]
    inputs = collate(rows, table.tokens, 12)
    candidates = int(inputs[3].sum())
    for k in (1, 3):
        model = NewsRecModel(len(vocab), NewsRecConfig(kind="sfi", select_k=k, **TINY)).eval()
        with torch.no_grad():
            out = model(*inputs)
            cheap = [torch.nn.functional.normalize(
                (model.selector(t) * (t != 0).unsqueeze(-1)).sum(-2) / (t != 0).sum(-1, keepdim=True).clamp(min=1),
                dim=-1) for t in (inputs[2], inputs[0])]
            top, valid = select_history(cheap[0], cheap[1], inputs[1], inputs[3], k)
        union = sum(len({int(i) for i, v in zip(top[b].flatten(), valid[b].flatten()) if v}) for b in range(len(imps)))
        assert union >= len(imps) * k  # every real candidate selected k of its >= 8 items
        assert out.items_encoded - candidates == union
    model = NewsRecModel(len(vocab), NewsRecConfig(kind="sfi", select_k=50, **TINY)).eval()
    with torch.no_grad():
        assert model(*inputs).items_encoded == int(inputs[1].sum()) + candidates  # k >= history: everything


@pytest.mark.parametrize("kind", ["base", "gateformer", "sfi"])
def test_short_training_lowers_the_loss(data, kind):
    recommender = NewsRecommender.create(data.train, NewsRecConfig(kind=kind, **TINY))
    result = recommender.fit(data.train, NewsRecTraining(epochs=3, batch_size=16, learning_rate=3e-3,
                                                         show_progress=False))
    assert result.steps >= 30
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.05


def test_save_and_load_score_the_same(data, tmp_path):
    recommender = NewsRecommender.create(data.train, NewsRecConfig(kind="sfi", **TINY))
    recommender.fit(data.train, NewsRecTraining(max_steps=3, show_progress=False))
    before = recommender.scores(data.dev)
    recommender.save(tmp_path / "model")
    loaded = NewsRecommender.load(tmp_path / "model")
    assert loaded.config == recommender.config and loaded.training["steps"] == 3
    for a, b in zip(before, loaded.scores(data.dev)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="already exists"):
        recommender.save(tmp_path / "model")
    recommender.save(tmp_path / "model", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(DataError, match="is not a news recommender"):
        NewsRecommender.load(tmp_path / "other")


def test_word_vectors_from_an_embedding_model(data, minilm):
    recommender = NewsRecommender.create(data.train, NewsRecConfig(kind="gateformer", **TINY), word_embedder=minilm)
    assert recommender.training["word_init"] == minilm.name
    index = {w: i for i, w in enumerate(recommender.vocab.words)}
    words = [w for w in ("quarterback", "touchdown", "vineyard", "espresso") if w in index]
    assert len(words) == 4, "the synthetic titles use these words"
    for table in (recommender.model.news_encoder.embed.weight, recommender.model.gate.embed.weight):
        v = torch.nn.functional.normalize(table[[index[w] for w in words]].detach(), dim=-1)
        # MiniLM places football words together and drinks words together; random vectors would not
        assert float(v[0] @ v[1]) > float(v[0] @ v[2]) and float(v[2] @ v[3]) > float(v[1] @ v[3])
