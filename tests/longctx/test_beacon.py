"""Activation Beacon on a tiny random Llama: equivalence, masks, positions, persistence, training."""
from __future__ import annotations

import pytest
import torch

from flagstone.longctx.beacon import BeaconConfig, BeaconLM, UnsupportedModelError


@pytest.fixture(scope="module")
def base(tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir).eval()


def random_ids(n: int, seed: int = 0, vocab: int = 300) -> torch.Tensor:
    return torch.randint(5, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def wrap(base, **config) -> BeaconLM:
    torch.manual_seed(0)
    return BeaconLM(base, BeaconConfig(**{"window": 32, "ratios": (2, 4, 8), "ratio": 4, **config})).eval()


@torch.no_grad()
def test_one_window_is_exactly_the_base_model(base):
    beacon = wrap(base)
    ids = random_ids(30)
    reference = base(ids).logits
    logits, state = beacon.feed(ids)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert state.memory.length == 0 and state.raw.length == 30
    first, state = beacon.feed(ids[:, :11])
    rest, state = beacon.feed(ids[:, 11:], state)
    torch.testing.assert_close(torch.cat([first, rest], 1), reference, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_windows_compress_into_beacons(base):
    beacon = wrap(base)
    logits, state = beacon.feed(random_ids(100))
    assert logits.shape[1] == 100
    assert state.segments == [(1, 9), (9, 17), (17, 25)]  # the sink token, then three windows of 32 at ratio 4
    assert state.memory.length == 25 and state.raw.length == 4
    assert state.kv_bytes() < beacon.kv_bytes_full(100) / 3


@torch.no_grad()
def test_raw_tokens_never_see_their_own_windows_beacons(base):
    beacon = wrap(base)
    ids = random_ids(80)
    before, _ = beacon.feed(ids)
    beacon.beacon.embedding.add_(torch.randn_like(beacon.beacon.embedding))
    after, _ = beacon.feed(ids)
    torch.testing.assert_close(after[:, :32], before[:, :32])  # the first window has no memory yet
    assert (after[:, 32:] - before[:, 32:]).abs().max() > 1e-4  # later windows read the changed beacons


@torch.no_grad()
def test_a_beacon_sees_only_raw_tokens_up_to_the_end_of_its_chunk(base):
    beacon = wrap(base)
    ids = random_ids(32)
    changed = ids.clone()
    changed[0, 13] = (changed[0, 13] + 7) % 300 + 5  # chunk 3 (tokens 12-15) at ratio 4
    _, a = beacon.feed(ids)
    _, b = beacon.feed(changed)
    keys_a, keys_b = a.memory.keys[-1][0], b.memory.keys[-1][0]  # (kv_heads, sink + 8 beacons, d)
    same = [(keys_a[:, 1 + i] - keys_b[:, 1 + i]).abs().max().item() < 1e-6 for i in range(8)]
    assert same == [True, True, True, False, False, False, False, False]


@torch.no_grad()
def test_step_by_step_reading_matches_reading_at_once_across_windows(base):
    beacon = wrap(base)
    ids = random_ids(75, seed=3)
    at_once, _ = beacon.feed(ids)
    state, pieces = None, []
    for start in range(0, 75, 9):
        logits, state = beacon.feed(ids[:, start:start + 9], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), at_once, atol=1e-5, rtol=1e-5)
    tokens, state = beacon.generate(ids, max_new_tokens=4, eos_token_id=-1)
    assert len(tokens) == 4 and state.tokens_seen == 75 + 4  # the state has read every generated token


def test_save_and_load_round_trip(base, tmp_path):
    beacon = wrap(base, ratio=2)
    with torch.no_grad():
        for p in beacon.beacon.parameters():
            p.add_(0.01 * torch.randn_like(p))
    beacon.save_beacon(tmp_path / "beacon")
    loaded = BeaconLM.load_beacon(base, tmp_path / "beacon").eval()
    assert loaded.config.ratio == 2 and loaded.config.window == 32
    ids = random_ids(90, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.feed(ids)[0], beacon.feed(ids)[0])


def test_training_the_beacon_lowers_the_loss_and_leaves_the_base_alone(base):
    beacon = wrap(base)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    optimizer = torch.optim.Adam(beacon.beacon.parameters(), lr=1e-2)
    ids = random_ids(96, seed=7, vocab=40)  # a small vocabulary: later windows are predictable from earlier ones
    beacon.train()
    losses = []
    for _ in range(12):
        loss = beacon.loss(ids, ratio=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_state.items())


def test_bad_settings(base):
    with pytest.raises(ValueError):
        BeaconConfig(window=30, ratios=(4,))
    with pytest.raises(UnsupportedModelError):
        BeaconLM(torch.nn.Linear(2, 2))


@torch.no_grad()
def test_without_a_sink_the_memory_holds_only_beacons(base):
    beacon = wrap(base, sink=0)
    _, state = beacon.feed(random_ids(70), keep_raw=True)
    assert state.segments == [(0, 8), (8, 16)] and state.memory.length == 16
    assert beacon.refill(state, [1]).segments == [(0, 8), (8, 40)]


@torch.no_grad()
def test_refilling_a_window_restores_exact_full_attention_over_it(base):
    beacon = wrap(base)
    ids = random_ids(52, seed=11)
    _, state = beacon.feed(ids[:, :32], keep_raw=True)  # one window, compressed
    assert state.memory.length == 1 + 8 and len(state.window_raw) == 1
    refilled = beacon.refill(state, [0])
    assert refilled.memory.length == 32 and refilled.segments == [(1, 32)]
    logits, _ = beacon.feed(ids[:, 32:], refilled)
    torch.testing.assert_close(logits, base(ids).logits[:, 32:], atol=1e-5, rtol=1e-5)
    compressed, _ = beacon.feed(ids[:, 32:], state)  # without refilling the logits differ
    assert (compressed - logits).abs().max() > 1e-4


@torch.no_grad()
def test_attention_scores_pick_windows_and_refill_checks_its_input(base, tiny_causal_lm_dir):
    from transformers import AutoTokenizer

    beacon = wrap(base)
    _, state = beacon.feed(random_ids(100, seed=2), keep_raw=True)
    scores = beacon.window_scores_by_attention(state, random_ids(6, seed=9)[0])
    assert scores.shape == (3,) and bool((scores > 0).all())
    assert state.memory.length == 25 and state.raw.length == 4  # scoring read the question on a copy
    texts = beacon.window_texts(state, AutoTokenizer.from_pretrained(tiny_causal_lm_dir))
    assert len(texts) == 3 and all(texts)
    with pytest.raises(ValueError):
        beacon.refill(state, [3])
    _, no_raw = beacon.feed(random_ids(64))
    with pytest.raises(Exception, match="keep_raw"):
        beacon.refill(no_raw, [0])


def test_train_beacon_lowers_loss_and_resumes(base, tmp_path):
    from flagstone.longctx.training import train_beacon
    from flagstone.training.loop import TrainingConfig

    segments = [random_ids(80, seed=s, vocab=40)[0].tolist() for s in range(4)]
    config = TrainingConfig(epochs=3, learning_rate=1e-2, warmup_ratio=0.0, seed=0, show_progress=False,
                            checkpoint_every=2)
    beacon = wrap(base)
    result = train_beacon(beacon, segments, config)
    assert result.steps == 12 and min(result.losses[-4:]) < max(result.losses[:4])
    # a run killed after step 6 resumes from its checkpoint to the same weights
    class Killed(Exception):
        pass

    def kill_at_6(step, loss):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train_beacon(wrap(base), segments, config, checkpoint_dir=tmp_path / "ckpt", on_step=kill_at_6)
    resumed = wrap(base)
    train_beacon(resumed, segments, config, checkpoint_dir=tmp_path / "ckpt")
    for a, b in zip(resumed.beacon.parameters(), beacon.beacon.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="first window"):
        train_beacon(wrap(base), [[5] * 10], config)


def test_retriever_scores_rank_the_window_about_the_question_first(minilm):
    texts = ["The harbour was dredged in 1871 for fishing boats.", "The bridge over the river opened in 1932.",
             "Snow is rare in this mild climate."]
    scores = BeaconLM.window_scores_by_retriever(texts, "When did the bridge open?", minilm)
    assert scores.shape == (3,) and int(scores.argmax()) == 1


def test_memorag_writes_clues_from_the_whole_context_through_a_beacon_memory(base, tiny_causal_lm_dir):
    from transformers import AutoTokenizer

    from flagstone.longctx.generator import BeaconGenerator
    from flagstone.rag import ContextIndex, MemoRAG
    from tests.rag.test_pipelines import DOCUMENTS, ScriptedGenerator

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    memory_model = BeaconGenerator(wrap(base), tokenizer)
    out = memory_model.generate([{"role": "user", "content": "hello " * 60}], max_new_tokens=3)
    assert out.prompt_tokens > 32 and 1 <= out.completion_tokens <= 3  # read past the 32-token window
    context = ContextIndex.build(DOCUMENTS, mode="bm25", chunk_tokens=64, overlap=0)
    answerer = ScriptedGenerator(["1932"])
    pipeline = MemoRAG(answerer, k=2, clue_tokens=4, memory_generator=memory_model)
    answer = pipeline.ask("When did the bridge open?", context)
    names = [s.name for s in answer.trace.steps if s.kind == "generate"]
    assert names == ["clues", "answer"]  # no gists: the memory model read the context itself
    clue_prompt = answer.trace.steps[0].input[-1]["content"]
    assert all(text in clue_prompt for _, text in DOCUMENTS)
    assert len(answerer.calls) == 1 and answer.answer == "1932"
