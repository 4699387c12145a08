"""Attention patterns against references built by hand with the Hugging Face model's own attention (custom 4-D
masks, hand-filled caches), the equal-memory accounting, and save/load of beacons trained with per-step ratios."""
from __future__ import annotations

import pytest
import torch

from flagstone.longctx.beacon import BeaconConfig, BeaconLM
from flagstone.longctx.streaming import SinkRecentLM, beacon_kv_entries


@pytest.fixture(scope="module")
def base(tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, attn_implementation="eager").eval()


def random_ids(n: int, seed: int = 0, vocab: int = 300) -> torch.Tensor:
    return torch.randint(5, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def rotated(base, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Keys (1, heads, n, d) rotated as the Hugging Face model rotates them at ``positions``."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cos, sin = base.model.rotary_emb(keys, positions[None])
    return apply_rotary_pos_emb(keys, keys, cos, sin)[1]


def cache_of(base, keys: list[torch.Tensor], values: list[torch.Tensor]):
    """A Hugging Face cache holding pre-rotary ``keys`` at positions 0.. and ``values``, layer by layer."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(rotated(base, k, torch.arange(k.shape[2])), v, layer)
    return cache


@torch.no_grad()
def test_beacon_compression_equals_a_hand_masked_interleaved_pass(base):
    """Window 0 (32 raw tokens, ratio 4) laid out as [raw x 32, beacon x 8] in one Hugging Face pass with a mask
    and positions written by hand: raw tokens causal among themselves and blind to the beacons; beacon i sees
    raw tokens up to the end of its chunk (4(i+1)) and beacons 0..i, at the position of its chunk's last token.
    The beacon q/k/v start as copies of the base, so the base model computes exactly what BeaconLM must."""
    torch.manual_seed(0)
    beacon = BeaconLM(base, BeaconConfig(window=32, ratios=(4,), ratio=4, sink=1)).eval()
    ids = random_ids(32, seed=4)
    _, state = beacon.feed(ids)

    w, r = 32, 4
    b = w // r
    allowed = torch.zeros(w + b, w + b, dtype=torch.bool)
    for q in range(w):
        for k in range(q + 1):
            allowed[q, k] = True
    for i in range(b):
        for k in range(r * (i + 1)):
            allowed[w + i, k] = True
        for j in range(i + 1):
            allowed[w + i, w + j] = True
    mask = torch.zeros(1, 1, w + b, w + b).masked_fill(~allowed, torch.finfo(torch.float32).min)
    positions = torch.tensor(list(range(w)) + [r * (i + 1) - 1 for i in range(b)])[None]
    embeds = torch.cat([base.model.embed_tokens(ids), beacon.beacon.embedding.expand(1, b, -1)], dim=1)
    out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    for layer, cached in enumerate(out.past_key_values.layers):
        mine_v = state.memory.values[layer][:, :, 1:]  # after the sink token
        mine_k = rotated(base, state.memory.keys[layer][:, :, 1:], positions[0, w:])
        torch.testing.assert_close(mine_v, cached.values[:, :, w:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine_k, cached.keys[:, :, w:], atol=1e-5, rtol=1e-5)
        # and the sink is the raw KV of token 0
        torch.testing.assert_close(state.memory.values[layer][:, :, :1], cached.values[:, :, :1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_the_next_window_reads_sink_and_beacons_at_positions_from_zero(base):
    """Window 1's raw tokens against a Hugging Face cache filled by hand with [sink, 8 beacons] at positions
    0..8: they see the whole memory and causally each other, nothing of window 0's raw tokens but the sink."""
    torch.manual_seed(0)
    beacon = BeaconLM(base, BeaconConfig(window=32, ratios=(4,), ratio=4, sink=1)).eval()
    with torch.no_grad():
        for p in beacon.beacon.parameters():  # a "trained" beacon: its projections differ from the base
            p.add_(0.05 * torch.randn_like(p))
    ids = random_ids(50, seed=6)
    logits, state = beacon.feed(ids)
    _, after_first = beacon.feed(ids[:, :32])
    memory = after_first.memory
    assert memory.length == 9
    reference = base(ids[:, 32:], cache=cache_of(base, memory.keys, memory.values),
                     position_ids=torch.arange(9, 9 + 18)[None]).logits
    torch.testing.assert_close(logits[:, 32:], reference, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sink_recent_equals_streaming_llm_built_token_by_token(base):
    """StreamingLLM by hand: each token reads a Hugging Face cache of the first 2 tokens + the most recent ones
    (7 entries), re-rotated at cache positions 0..6, and sits at position 7; its pre-rotary key is captured
    from k_proj. SinkRecentLM with budget 8 and chunk 1 must give the same logits."""
    ids = random_ids(30, seed=8)
    budget, sink = 8, 2
    layers = base.model.layers
    keys: list[list[torch.Tensor]] = [[] for _ in layers]
    values: list[list[torch.Tensor]] = [[] for _ in layers]
    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.self_attn.k_proj.register_forward_hook(
        lambda module, args, output, i=i: captured.__setitem__(i, output)) for i, layer in enumerate(layers)]
    kv_heads = base.config.num_key_value_heads
    head_dim = base.config.hidden_size // base.config.num_attention_heads
    reference = []
    try:
        for t in range(ids.shape[1]):
            keep = list(range(t)) if t < budget else list(range(sink)) + list(range(t - (budget - 1 - sink), t))
            if keep:
                cache = cache_of(base, [torch.cat([ks[j] for j in keep], dim=2) for ks in keys],
                                 [torch.cat([vs[j] for j in keep], dim=2) for vs in values])
            else:
                cache = None
            out = base(ids[:, t:t + 1], cache=cache, position_ids=torch.tensor([[len(keep)]]),
                       use_cache=True)
            reference.append(out.logits)
            for i, layer_cache in enumerate(out.past_key_values.layers):
                keys[i].append(captured[i].view(1, 1, kv_heads, head_dim).transpose(1, 2))
                values[i].append(layer_cache.values[:, :, -1:])
    finally:
        for hook in hooks:
            hook.remove()
    streaming = SinkRecentLM(base, budget=budget, sink=sink, chunk=1)
    logits, state = streaming.feed(ids)
    torch.testing.assert_close(logits, torch.cat(reference, dim=1), atol=1e-5, rtol=1e-5)
    assert state.peak_entries == budget and state.cache.length == budget


@torch.no_grad()
def test_sink_recent_in_chunks_never_exceeds_its_budget(base):
    ids = random_ids(100, seed=9)
    for chunk in (1, 5, 16):
        model = SinkRecentLM(base, budget=40, sink=4, chunk=chunk)
        logits, state = model.feed(ids)
        assert logits.shape[1] == 100 and state.peak_entries == 40 and state.cache.length == 40
        assert state.kv_bytes() == model.kv_bytes_full(40)
    # within the budget nothing is evicted: the plain model's logits
    short = SinkRecentLM(base, budget=64, sink=4, chunk=16).feed(ids[:, :64])[0]
    torch.testing.assert_close(short, base(ids[:, :64]).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        SinkRecentLM(base, budget=10, sink=4, chunk=8)


@torch.no_grad()
@pytest.mark.parametrize("tokens", [1, 31, 32, 33, 64, 95, 100, 128, 129])
@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_equal_memory_accounting_matches_what_the_beacon_reads(base, tokens, ratio):
    torch.manual_seed(0)
    beacon = BeaconLM(base, BeaconConfig(window=32, ratios=(2, 4, 8), ratio=ratio, sink=1)).eval()
    _, state = beacon.feed(random_ids(tokens, seed=tokens))
    budget = beacon_kv_entries(tokens, 32, ratio, 1)
    assert state.peak_entries == budget
    # a sink + recent model given that budget holds and reads exactly as many entries
    if budget >= 4 + 1:
        _, streaming = SinkRecentLM(base, budget=budget, sink=4, chunk=1).feed(random_ids(tokens, seed=tokens))
        assert streaming.peak_entries == budget


def test_equal_memory_accounting_by_hand():
    # 2,048 tokens, window 256, one sink token: 7 windows compressed before the last one fills
    assert beacon_kv_entries(2048, 256, 4, 1) == 1 + 7 * 64 + 256 == 705
    assert beacon_kv_entries(2048, 256, 8, 1) == 1 + 7 * 32 + 256 == 481
    assert beacon_kv_entries(2048, 256, 2, 1) == 1 + 7 * 128 + 256
    assert beacon_kv_entries(200, 256, 4, 1) == 200
    with pytest.raises(ValueError):
        beacon_kv_entries(10, 256, 3, 1)


def test_beacons_trained_with_a_ratio_per_step_save_and_load(base, tmp_path):
    from flagstone.longctx.training import train_beacon
    from flagstone.training.loop import TrainingConfig

    torch.manual_seed(0)
    beacon = BeaconLM(base, BeaconConfig(window=32, ratios=(2, 4, 8), ratio=4))
    before = {k: v.clone() for k, v in beacon.beacon.state_dict().items()}
    segments = [random_ids(80, seed=s, vocab=40)[0].tolist() for s in range(3)]
    config = TrainingConfig(epochs=1, learning_rate=1e-2, warmup_ratio=0.0, seed=0, show_progress=False)
    result = train_beacon(beacon, segments, config, sample_ratio="step")
    assert result.steps == 3
    assert any(not torch.equal(before[k], v) for k, v in beacon.beacon.state_dict().items())
    beacon.eval().save_beacon(tmp_path / "trained")
    loaded = BeaconLM.load_beacon(base, tmp_path / "trained").eval()
    ids = random_ids(90, seed=12)
    with torch.no_grad():
        for ratio in (2, 8):
            torch.testing.assert_close(loaded.feed(ids, ratio=ratio)[0], beacon.feed(ids, ratio=ratio)[0])
    with pytest.raises(ValueError, match="sample_ratio"):
        train_beacon(beacon, segments, config, sample_ratio="token")


def test_a_ratio_per_step_means_one_ratio_for_every_window_of_a_segment(base, monkeypatch):
    from flagstone.longctx.training import train_beacon
    from flagstone.training.loop import TrainingConfig

    torch.manual_seed(0)
    beacon = BeaconLM(base, BeaconConfig(window=32, ratios=(2, 4, 8), ratio=4))
    used: list[list[int]] = []
    compress = beacon._compress

    def spy(state, ratio, keep_raw):
        used[-1].append(ratio)
        return compress(state, ratio, keep_raw)

    loss = beacon.loss

    def counting_loss(ids, *, ratio=None):
        used.append([])
        return loss(ids, ratio=ratio)

    monkeypatch.setattr(beacon, "_compress", spy)
    monkeypatch.setattr(beacon, "loss", counting_loss)
    segments = [random_ids(100, seed=s, vocab=40)[0].tolist() for s in range(8)]
    config = TrainingConfig(epochs=1, learning_rate=1e-3, warmup_ratio=0.0, seed=0, show_progress=False)
    train_beacon(beacon, segments, config, sample_ratio="step")
    assert all(len(set(r)) == 1 and len(r) == 3 for r in used)  # 3 windows, one ratio each segment
    assert len({r[0] for r in used}) > 1  # and the ratio changes between steps


@torch.no_grad()
def test_raw_attention_scores_give_no_window_an_edge_for_its_place(base):
    """Every window's raw keys sit at the same positions before the question: reversing the windows reverses
    the scores (the beacon-attention signal, read through rotary distance, favours the latest windows)."""
    from dataclasses import replace

    torch.manual_seed(0)
    beacon = BeaconLM(base, BeaconConfig(window=32, ratios=(4,), ratio=4, sink=0)).eval()
    _, state = beacon.feed(random_ids(100, seed=2), keep_raw=True)
    question = random_ids(6, seed=9)[0]
    scores = beacon.window_scores_by_raw_attention(state, question)
    assert scores.shape == (3,) and bool((scores > 0).all()) and bool((scores <= 1).all())
    reversed_state = replace(state, window_raw=state.window_raw[::-1])
    torch.testing.assert_close(beacon.window_scores_by_raw_attention(reversed_state, question), scores.flip(0))
    assert state.memory.length == 24 and state.raw.length == 4  # the question was read on a copy
    _, no_raw = beacon.feed(random_ids(64))
    with pytest.raises(Exception, match="keep_raw"):
        beacon.window_scores_by_raw_attention(no_raw, question)
