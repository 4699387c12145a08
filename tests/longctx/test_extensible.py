"""Extensible embeddings on a tiny random Llama: shapes and position counts at each ratio, the frozen LM,
training that lowers the loss, and save/load."""
from __future__ import annotations

import pytest
import torch

from flagstone.longctx.extensible import (
    ExtenderConfig,
    ExtensibleLM,
    load_extender,
    new_extender,
    save_extender,
    train_extender,
)
from flagstone.training.loop import TrainingConfig


@pytest.fixture()
def base(tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir).eval()


def ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(5, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def make(base, **config) -> ExtensibleLM:
    torch.manual_seed(0)
    return ExtensibleLM(base, new_extender(base, ExtenderConfig(**{"encoder_layers": 1, "mlp_hidden": 16, **config})))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 16])
def test_shapes_and_positions_at_each_ratio(base, k):
    model = make(base)
    context, raw = ids(101), ids(20, 1)
    embeds, plan = model.embeddings(context, raw, k)
    slots = 100 // k  # one sink token, then the most recent multiple of k of the other 100
    assert (plan.sink, plan.slots, plan.compressed_tokens, plan.dropped, plan.recent, plan.raw) == (
        1, slots, slots * k, 100 - slots * k, 0, 20)
    assert plan.positions == 1 + slots + 20
    assert embeds.shape == (1, plan.positions, base.config.hidden_size)
    with torch.no_grad():
        assert model.logits(context, raw, k).shape == (1, 20, base.config.vocab_size)
        out = model.extender(torch.tensor([context[1:]]), k)
    assert out.shape == (1, 100 // k, base.config.hidden_size)


def test_last_only_gives_the_last_raw_tokens_logits_alone(base):
    model = make(base)
    context, raw = ids(64), ids(12, 1)
    with torch.no_grad():
        every = model.logits(context, raw, 4, recent=8)
        last = model.logits(context, raw, 4, recent=8, last_only=True)
    assert last.shape == (1, 1, base.config.vocab_size)
    torch.testing.assert_close(last[0, 0], every[0, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_recent_tokens_stay_raw_and_slots_respect_the_budget(base, k):
    model = make(base)
    context, raw = ids(101), ids(20, 1)
    budget = 100 // k  # the positions pure compression would use
    recent = budget // 2
    embeds, plan = model.embeddings(context, raw, k, recent=recent, max_slots=budget - recent)
    assert plan.positions == 1 + budget + 20 and plan.recent == recent and plan.slots == budget - recent
    assert plan.dropped == 100 - recent - plan.compressed_tokens
    table = base.get_input_embeddings()
    with torch.no_grad():
        torch.testing.assert_close(embeds[0, 1 + plan.slots:1 + plan.slots + recent], table(torch.tensor(context[-recent:])))
        torch.testing.assert_close(embeds[0, :1], table(torch.tensor(context[:1])))
        start = 1 + plan.dropped  # the slots hold the tokens just before the recent ones
        chunk = torch.tensor([context[start:start + plan.compressed_tokens]])
        torch.testing.assert_close(embeds[:, 1:1 + plan.slots], model.extender(chunk, k))


def test_untrained_extender_is_the_mean_token_embedding_and_k1_keeps_tokens(base):
    model = make(base)
    context = torch.tensor([ids(64)])
    table = base.get_input_embeddings()(context)
    with torch.no_grad():
        torch.testing.assert_close(model.extender(context, 4), table.reshape(1, 16, 4, -1).mean(2))
        torch.testing.assert_close(model.extender(context, 1), table)


def test_each_slot_reads_only_its_chunk_and_what_came_before(base):
    model = make(base)
    with torch.no_grad():
        model.extender.down.weight.normal_(0, 0.5)  # a trained-looking extender: features matter
        context = ids(32)
        changed = list(context)
        changed[13] = (changed[13] + 7) % 290 + 5  # chunk 3 at k = 4
        a = model.extender(torch.tensor([context]), 4)
        b = model.extender(torch.tensor([changed]), 4)
    same = [(a[0, i] - b[0, i]).abs().max().item() < 1e-6 for i in range(8)]
    assert same == [True, True, True, False, False, False, False, False]


def test_the_lm_stays_frozen_and_only_the_extender_trains(base):
    model = make(base, ratios=(2, 4))
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    segments = [ids(48, s) for s in range(6)]
    with torch.no_grad():
        losses_before = [float(model.loss(s, 4, raw=16)) for s in segments]
    config = TrainingConfig(epochs=8, learning_rate=3e-3, precision="float32", show_progress=False, seed=0)
    result = train_extender(model, segments, config, raw=16)
    assert result.steps == 48
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    assert all(not p.requires_grad for p in base.parameters())
    with torch.no_grad():
        losses_after = [float(model.loss(s, 4, raw=16)) for s in segments]
    assert sum(losses_after) < sum(losses_before) - 0.05
    assert model.extender.down.weight.abs().max() > 0  # the correction left zero


def test_save_load_round_trip(base, tmp_path):
    model = make(base)
    with torch.no_grad():
        for p in model.extender.parameters():
            p.normal_(0, 0.1)
    folder = save_extender(model.extender, tmp_path / "ext")
    loaded = load_extender(base, folder)
    assert loaded.config == model.extender.config
    context = torch.tensor([ids(40)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(context, 4), model.extender(context, 4))
    from flagstone.errors import DataError

    with pytest.raises(DataError, match="overwrite"):
        save_extender(model.extender, folder)
    save_extender(model.extender, folder, overwrite=True)


def test_bad_ratio_is_a_user_error(base):
    from flagstone.errors import FlagstoneError

    with pytest.raises(FlagstoneError, match="ratio"):
        make(base).embeddings(ids(10), ids(4), 0)
