"""Activation Beacon: compress a causal LM's KV cache window by window into beacon activations.

Input is read in windows of ``window`` raw tokens. While a window is open its raw tokens attend to the memory
(beacon KV of earlier windows) and causally to each other, exactly like the base model. When the window is
full it is compressed: ``window / ratio`` beacon tokens, each placed after a chunk of ``ratio`` raw tokens,
attend to the memory, to the raw tokens up to the end of their chunk and to earlier beacons, through their
own embedding and their own q/k/v projections (copied from the base at initialisation). Their KV joins the
memory and the window's raw KV is dropped.

Attention variant: raw tokens never attend to the beacons of their own window (they see the memory and the
raw tokens before them); the paper's final design interleaves beacons with raw tokens and lets later raw tokens
of a window attend to its earlier beacons. This one is kept because (1) a window is read raw first and
compressed once it is full, so generation and step-by-step reading need no beacon pass per chunk, (2) input that
fits in one window gives exactly the base model's output, (3) refilling a window's raw KV restores exactly what
full attention computed over it (both tested). The beacons themselves see exactly what the paper's interleaved
layout gives them (tests/longctx/test_streaming.py builds that layout by hand in one Hugging Face pass). The
interleaved variant was not trained here: on two shared CPU cores one beacon training run took the time there
was.

Keys are kept before rotary embedding and rotated when used: memory entries take positions 0..m-1, the open
window the positions after them, a beacon the position of the last raw token of its chunk. As in the paper,
the first ``sink`` raw tokens stay uncompressed at the front of the memory: models lean on the first
positions as an attention sink, and a memory without them disturbs every later window.

Supported: Hugging Face Llama-family decoders (Llama, SmolLM2, Qwen2, Mistral): ``model.model.layers[i]``
with ``self_attn.{q,k,v,o}_proj``, ``input_layernorm``, ``post_attention_layernorm``, ``mlp``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from flagstone._io import LegacyLayout, atomic_folder
from flagstone.errors import FlagstoneError

BEACON_FILE = "beacon.safetensors"
BEACON_CONFIG = "beacon_config.json"
# a beacon folder saved before output markers existed
BEACON_LAYOUT = LegacyLayout(BEACON_CONFIG, frozenset({BEACON_FILE, BEACON_CONFIG}))


class UnsupportedModelError(FlagstoneError):
    """The causal LM's architecture is not one the beacon wrapper knows."""


@dataclass
class BeaconConfig:
    window: int = 1024  # raw tokens per window
    ratios: tuple[int, ...] = (2, 4, 8)  # compression ratios to draw from in training
    ratio: int | None = 4  # fixed ratio at inference; None: the smallest of ``ratios`` that fits ``max_memory``
    max_memory: int | None = None  # beacon entries the memory may hold (None: no limit)
    sink: int = 1  # first raw tokens kept uncompressed at the front of the memory (the attention sink)

    def __post_init__(self) -> None:
        for r in (*self.ratios, *([self.ratio] if self.ratio else [])):
            if r < 1 or self.window % r:
                raise ValueError(f"ratio {r} must be >= 1 and divide the window ({self.window})")


class BeaconParameters(nn.Module):
    """What training changes: a beacon embedding and, per layer, q/k/v projections for beacon tokens."""

    def __init__(self, layers: Sequence[nn.Module], embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(embedding.detach().clone().float())
        self.q = nn.ModuleList()
        self.k = nn.ModuleList()
        self.v = nn.ModuleList()
        for layer in layers:
            attn = layer.self_attn
            for target, source in ((self.q, attn.q_proj), (self.k, attn.k_proj), (self.v, attn.v_proj)):
                copy = nn.Linear(source.in_features, source.out_features, bias=source.bias is not None)
                copy.load_state_dict(source.state_dict())
                target.append(copy.to(source.weight.dtype))


@dataclass
class KV:
    """Per-layer keys (before rotary embedding) and values: lists of (1, kv_heads, n, head_dim)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def append(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> KV:
        if not self.keys:
            return KV(list(keys), list(values))
        return KV([torch.cat([a, b], dim=2) for a, b in zip(self.keys, keys)],
                  [torch.cat([a, b], dim=2) for a, b in zip(self.values, values)])

    def detach(self) -> KV:
        return KV([k.detach() for k in self.keys], [v.detach() for v in self.values])


@dataclass
class BeaconState:
    """The compressed memory, the open window's raw KV, and the raw KV of finished windows (for refilling)."""

    memory: KV = field(default_factory=lambda: KV([], []))
    raw: KV = field(default_factory=lambda: KV([], []))
    segments: list[tuple[int, int]] = field(default_factory=list)  # memory span of each compressed window
    window_raw: list[KV] = field(default_factory=list)  # each finished window's raw KV, kept when asked
    window_ids: list[list[int]] = field(default_factory=list)  # and its token ids (for retrieval by text)
    open_ids: list[int] = field(default_factory=list)  # token ids of the open window
    tokens_seen: int = 0
    peak_entries: int = 0  # the most KV entries (memory + open window) any raw token attended to

    def kv_bytes(self) -> int:
        return self.memory.nbytes() + self.raw.nbytes()


class LayerwiseDecoder(nn.Module):
    """A frozen Llama-family causal LM run layer by layer over explicit KV (keys kept before rotary embedding),
    so callers decide which entries each token attends to and at which positions. Shared by the beacon
    wrapper and the attention-sink + recent-window baseline (:mod:`flagstone.longctx.streaming`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        decoder = getattr(model, "model", None)
        layers = getattr(decoder, "layers", None)
        if layers is None or not all(hasattr(layer.self_attn, "q_proj") for layer in layers):
            raise UnsupportedModelError(f"{type(model).__name__} is not a Llama-family decoder")
        if any(hasattr(layer.self_attn, "q_norm") for layer in layers):
            raise UnsupportedModelError(f"{type(model).__name__} normalises q/k per head (Qwen3-style): not supported")
        self.decoder, self.layers = decoder, layers
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for p in self.model.parameters():
            p.requires_grad_(False)

    # -- building blocks ---------------------------------------------------------------------------
    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.decoder.rotary_emb(x, positions[None])
        return cos[:, None], sin[:, None]  # (1, 1, n, d) broadcast over heads

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _project(self, layer: int, hidden: torch.Tensor, is_beacon: bool):
        if is_beacon:
            raise ValueError("this decoder has no beacon projections")
        attn = self.layers[layer].self_attn
        return self._split_heads(hidden, attn.q_proj, attn.k_proj, attn.v_proj)

    def _split_heads(self, hidden: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module):
        n = hidden.shape[1]
        q = q_proj(hidden).view(1, n, self.heads, self.head_dim).transpose(1, 2)
        k = k_proj(hidden).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v_proj(hidden).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def _attend(self, layer: int, q: torch.Tensor, q_pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                k_pos: torch.Tensor, allowed: torch.Tensor, capture: list | None = None) -> torch.Tensor:
        """Rotate with the given positions, attend where ``allowed`` (queries x keys), project out."""
        q = self._rotate(q, *self._rope(q, q_pos))
        keys = self._rotate(keys, *self._rope(keys, k_pos))
        groups = self.heads // self.kv_heads
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        if capture is not None:  # attention mass on each key, summed over heads and queries
            capture.append(weights.detach().float().sum(dim=(0, 1, 2)))
        out = torch.matmul(weights, values).transpose(1, 2).reshape(1, q.shape[2], -1)
        return self.layers[layer].self_attn.o_proj(out)

    def _mlp(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def _read(self, ids: torch.Tensor, context: KV, open_kv: KV, capture: list | None = None,
              queries: list | None = None) -> tuple[torch.Tensor, KV]:
        """Hidden states of new raw tokens attending to all of ``context`` then ``open_kv`` (positions from 0 in
        that order) and causally to each other, with the new tokens' KV. ``queries`` collects each layer's
        query projections (before rotary embedding) when given."""
        m, c, n = context.length, open_kv.length, ids.shape[1]
        hidden = self.decoder.embed_tokens(ids)
        q_pos = torch.arange(m + c, m + c + n)
        k_pos = torch.arange(0, m + c + n)
        allowed = torch.ones(n, m + c + n, dtype=torch.bool)
        allowed[:, m + c:] = torch.ones(n, n, dtype=torch.bool).tril()
        new_keys, new_values = [], []
        for i, block in enumerate(self.layers):
            normed = block.input_layernorm(hidden)
            q, k, v = self._project(i, normed, is_beacon=False)
            if queries is not None:
                queries.append(q.detach())
            keys = torch.cat([t for t in (context.keys[i] if m else None, open_kv.keys[i] if c else None, k)
                              if t is not None], dim=2)
            values = torch.cat([t for t in (context.values[i] if m else None, open_kv.values[i] if c else None, v)
                                if t is not None], dim=2)
            hidden = hidden + self._attend(i, q, q_pos, keys, values, k_pos, allowed, capture)
            hidden = self._mlp(i, hidden)
            new_keys.append(k)
            new_values.append(v)
        return hidden, KV(new_keys, new_values)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.decoder.norm(hidden))

    def kv_bytes_per_entry(self) -> int:
        """Bytes of one KV entry: one token's keys and values over all layers."""
        element = self.decoder.embed_tokens.weight.element_size()
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * element

    def kv_bytes_full(self, tokens: int) -> int:
        """KV bytes the base model would hold for ``tokens`` tokens (for comparison with compressed states)."""
        return tokens * self.kv_bytes_per_entry()


class BeaconLM(LayerwiseDecoder):
    """A causal LM that reads unlimited input through beacon compression (see the module docstring)."""

    def __init__(self, model: nn.Module, config: BeaconConfig | None = None,
                 beacon: BeaconParameters | None = None) -> None:
        super().__init__(model)
        self.config = config or BeaconConfig()
        if beacon is None:
            # start beacons from the mean token embedding: a neutral input every layer has seen the like of
            embedding = self.decoder.embed_tokens.weight.detach().float().mean(dim=0)
            beacon = BeaconParameters(self.layers, embedding)
        self.beacon = beacon

    def _project(self, layer: int, hidden: torch.Tensor, is_beacon: bool):
        if not is_beacon:
            return super()._project(layer, hidden, False)
        return self._split_heads(hidden, self.beacon.q[layer], self.beacon.k[layer], self.beacon.v[layer])

    # -- reading raw tokens ----------------------------------------------------------------------------
    def _raw_forward(self, ids: torch.Tensor, state: BeaconState, context: KV | None = None,
                     capture: list | None = None, queries: list | None = None) -> torch.Tensor:
        """Hidden states of new raw tokens attending to ``context`` (default: memory) and the open window;
        their KV is appended to the open window."""
        context = state.memory if context is None else context
        state.peak_entries = max(state.peak_entries, context.length + state.raw.length + ids.shape[1])
        hidden, new = self._read(ids, context, state.raw, capture, queries)
        state.raw = state.raw.append(new.keys, new.values)
        state.tokens_seen += ids.shape[1]
        return hidden

    def _compress(self, state: BeaconState, ratio: int, keep_raw: bool) -> None:
        """Turn the full open window into beacon KV appended to the memory."""
        raw, memory = state.raw, state.memory
        m, w = memory.length, raw.length
        if w % ratio:
            raise ValueError(f"ratio {ratio} does not divide the window of {w} tokens")
        b = w // ratio
        hidden = self.beacon.embedding.to(self.decoder.embed_tokens.weight.dtype).expand(1, b, -1)
        chunk_end = torch.arange(1, b + 1) * ratio  # beacon i sees raw tokens < chunk_end[i]
        q_pos = m + chunk_end - 1
        k_pos = torch.cat([torch.arange(0, m + w), q_pos])
        allowed = torch.ones(b, m + w + b, dtype=torch.bool)
        allowed[:, m:m + w] = torch.arange(w)[None, :] < chunk_end[:, None]
        allowed[:, m + w:] = torch.ones(b, b, dtype=torch.bool).tril()
        new_keys, new_values = [], []
        for i, block in enumerate(self.layers):
            normed = block.input_layernorm(hidden)
            q, k, v = self._project(i, normed, is_beacon=True)
            keys = torch.cat([t for t in (memory.keys[i] if m else None, raw.keys[i], k) if t is not None], dim=2)
            values = torch.cat([t for t in (memory.values[i] if m else None, raw.values[i], v) if t is not None],
                               dim=2)
            hidden = hidden + self._attend(i, q, q_pos, keys, values, k_pos, allowed)
            hidden = self._mlp(i, hidden)
            new_keys.append(k)
            new_values.append(v)
        if m == 0 and not state.segments and self.config.sink:  # the first window leaves its sink behind
            s = min(self.config.sink, w)
            memory = KV([k[:, :, :s] for k in raw.keys], [v[:, :, :s] for v in raw.values])
            m = s
        state.memory = memory.append(new_keys, new_values)
        state.segments.append((m, m + b))
        if keep_raw:
            state.window_raw.append(raw.detach())
            state.window_ids.append(state.open_ids)
        state.open_ids = []
        state.raw = KV([], [])

    def choose_ratio(self, state: BeaconState) -> int:
        cfg = self.config
        if self.training:  # torch's generator: seeded and restored by resumable training
            return cfg.ratios[int(torch.randint(len(cfg.ratios), (1,)))]
        if cfg.ratio is not None:
            return cfg.ratio
        for r in sorted(cfg.ratios):  # the smallest ratio whose beacons still fit the memory budget
            if cfg.max_memory is None or state.memory.length + cfg.window // r <= cfg.max_memory:
                return r
        return max(cfg.ratios)

    # -- public API -------------------------------------------------------------------------------------
    def feed(self, ids: torch.Tensor | Sequence[int], state: BeaconState | None = None, *, logits: bool = True,
             keep_raw: bool = False, ratio: int | None = None) -> tuple[torch.Tensor | None, BeaconState]:
        """Read ``ids`` (1-D or (1, n)), compressing each window as it fills. Returns the logits of every
        token read (or None) and the state to continue from."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        state = state if state is not None else BeaconState()
        out = []
        at = 0
        while at < ids.shape[1]:
            room = self.config.window - state.raw.length
            piece = ids[:, at:at + room]
            hidden = self._raw_forward(piece, state)
            state.open_ids += piece[0].tolist()
            if logits:
                out.append(self._logits(hidden))
            at += piece.shape[1]
            if state.raw.length == self.config.window:
                self._compress(state, ratio or self.choose_ratio(state), keep_raw)
        return (torch.cat(out, dim=1) if out else None), state

    def loss(self, ids: torch.Tensor | Sequence[int], *, ratio: int | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy over all raw tokens (gradients reach the beacon parameters)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        logits, _ = self.feed(ids, ratio=ratio)
        return nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])

    @torch.no_grad()
    def generate(self, ids: torch.Tensor | Sequence[int], *, max_new_tokens: int = 32,
                 eos_token_id: int | Sequence[int] | None = None,
                 state: BeaconState | None = None) -> tuple[list[int], BeaconState]:
        """Greedy continuation of ``ids`` read through the compressed memory, and the state after it."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        if eos_token_id is None:
            eos_token_id = self.model.generation_config.eos_token_id
        stops = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]) - {None}
        logits, state = self.feed(ids, state)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            if token in stops:
                break
            new.append(token)
            logits, state = self.feed([token], state)
        return new, state

    # -- refilling (ACRE) and KV-page retrieval (RetroLM) ------------------------------------------------
    @torch.no_grad()
    def window_scores_by_attention(self, state: BeaconState, question: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """ACRE's selection signal: the attention mass the question puts on each compressed window's beacons,
        summed over layers, heads and question tokens (the question is read on a copy of the state)."""
        ids = torch.as_tensor(question, dtype=torch.long).reshape(1, -1)
        probe = BeaconState(memory=state.memory, raw=state.raw)
        capture: list[torch.Tensor] = []
        self._raw_forward(ids, probe, capture=capture)
        mass = torch.stack([c[: state.memory.length] for c in capture]).sum(dim=0)
        return torch.stack([mass[a:b].sum() for a, b in state.segments]) if state.segments else torch.zeros(0)

    @torch.no_grad()
    def window_scores_by_raw_attention(self, state: BeaconState,
                                       question: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """ACRE's query-guided selection over the detailed (raw) cache: the question is read over the compressed
        memory, and its queries, layer by layer, attend jointly over the raw keys of every compressed window,
        each window placed right before the question (the same positions for all, so rotary distance gives no
        window an edge: the beacon-attention signal above always favoured the latest windows). A window's score
        is the largest attention weight any of its raw tokens gets from any question token, head and layer, so
        one strongly matching span decides (a needle is a few tokens). Needs ``feed(..., keep_raw=True)``."""
        if len(state.window_raw) != len(state.segments):
            raise FlagstoneError("raw-attention scores need the raw KV of every window: read with keep_raw=True")
        if not state.segments:
            return torch.zeros(0)
        ids = torch.as_tensor(question, dtype=torch.long).reshape(1, -1)
        probe = BeaconState(memory=state.memory, raw=state.raw)
        queries: list[torch.Tensor] = []
        self._raw_forward(ids, probe, queries=queries)
        sink = state.segments[0][0]  # window 0's first tokens are the attention sink: never a candidate
        spans = [(sink if w == 0 else 0, kv.length) for w, kv in enumerate(state.window_raw)]
        longest = max(end - start for start, end in spans)
        n = ids.shape[1]
        q_pos = torch.arange(longest, longest + n)
        groups = self.heads // self.kv_heads
        best = torch.zeros(len(spans))
        for layer, q in enumerate(queries):
            q = self._rotate(q, *self._rope(q, q_pos))
            keys, owner = [], []
            for w, (start, end) in enumerate(spans):
                k = state.window_raw[w].keys[layer][:, :, start:end]
                keys.append(self._rotate(k, *self._rope(k, torch.arange(longest - (end - start), longest))))
                owner += [w] * (end - start)
            keys_all = torch.cat(keys, dim=2).repeat_interleave(groups, dim=1)
            weights = torch.softmax(torch.matmul(q, keys_all.transpose(2, 3)).float() / math.sqrt(self.head_dim),
                                    dim=-1)
            per_key = weights.amax(dim=(0, 1, 2))  # the strongest pull on each raw key
            best = torch.maximum(best, torch.zeros(len(spans)).scatter_reduce(
                0, torch.tensor(owner), per_key, reduce="amax"))
        return best

    def window_texts(self, state: BeaconState, tokenizer) -> list[str]:
        return [tokenizer.decode(ids) for ids in state.window_ids]

    @staticmethod
    def window_scores_by_retriever(texts: Sequence[str], question: str, embedder) -> torch.Tensor:
        """RetroLM's selection signal: dense similarity between the question and each window's text
        (``embedder`` is a :class:`flagstone.models.embedder.Embedder`)."""
        if not texts:
            return torch.zeros(0)
        query = embedder.encode_queries([question]).dense[0]
        pages = embedder.encode_documents(list(texts)).dense
        return torch.from_numpy(pages @ query)

    def refill(self, state: BeaconState, windows: Sequence[int]) -> BeaconState:
        """A state whose memory holds the raw KV of ``windows`` (indices of compressed windows) in place of
        their beacons; the rest stays compressed. Needs ``feed(..., keep_raw=True)``."""
        if len(state.window_raw) != len(state.segments):
            raise FlagstoneError("refilling needs the raw KV of every window: read the input with keep_raw=True")
        chosen = {int(w) for w in windows}
        unknown = chosen - set(range(len(state.segments)))
        if unknown:
            raise ValueError(f"no compressed windows {sorted(unknown)}; there are {len(state.segments)}")
        prefix = state.segments[0][0] if state.segments else 0  # the sink, already raw
        keys = [[k[:, :, :prefix]] for k in state.memory.keys]
        values = [[v[:, :, :prefix]] for v in state.memory.values]
        segments, at = [], prefix
        for w, (a, b) in enumerate(state.segments):
            skip = prefix if w == 0 else 0  # window 0's first tokens are the sink
            for i in range(len(self.layers)):
                if w in chosen:
                    keys[i].append(state.window_raw[w].keys[i][:, :, skip:])
                    values[i].append(state.window_raw[w].values[i][:, :, skip:])
                else:
                    keys[i].append(state.memory.keys[i][:, :, a:b])
                    values[i].append(state.memory.values[i][:, :, a:b])
            size = state.window_raw[w].length - skip if w in chosen else b - a
            segments.append((at, at + size))
            at += size
        memory = KV([torch.cat(k, dim=2) for k in keys], [torch.cat(v, dim=2) for v in values])
        return BeaconState(memory=memory, raw=state.raw, segments=segments, window_raw=state.window_raw,
                           window_ids=state.window_ids, open_ids=list(state.open_ids),
                           tokens_seen=state.tokens_seen)

    # -- persistence ----------------------------------------------------------------------------------
    def save_beacon(self, folder: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write only the beacon parameters and settings (the base model stays where it is); an existing
        folder is replaced only with ``overwrite=True`` (:func:`flagstone._io.check_output_folder`)."""
        import json

        from safetensors.torch import save_file


        with atomic_folder(folder, overwrite=overwrite, legacy=BEACON_LAYOUT) as staging:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.beacon.state_dict().items()},
                      str(staging / BEACON_FILE))
            settings = {"window": self.config.window, "ratios": list(self.config.ratios), "ratio": self.config.ratio,
                        "max_memory": self.config.max_memory, "sink": self.config.sink, "layers": len(self.layers),
                        "hidden_size": int(self.beacon.embedding.shape[0])}
            (staging / BEACON_CONFIG).write_text(json.dumps(settings, indent=2))

    @classmethod
    def load_beacon(cls, model: nn.Module, folder: str | os.PathLike) -> BeaconLM:
        import json

        from safetensors.torch import load_file

        from flagstone._io import require_file
        from flagstone.errors import DataError

        folder = Path(folder)
        settings = json.loads(require_file(folder / BEACON_CONFIG, "beacon settings").read_text())
        wrapped = cls(model, BeaconConfig(window=settings["window"], ratios=tuple(settings["ratios"]),
                                          ratio=settings["ratio"], max_memory=settings.get("max_memory"),
                                          sink=settings.get("sink", 0)))
        state = load_file(str(require_file(folder / BEACON_FILE, "beacon weights")))
        if settings["layers"] != len(wrapped.layers) or settings["hidden_size"] != wrapped.beacon.embedding.shape[0]:
            raise DataError(f"the beacon in {folder} was trained for another model ({settings['layers']} layers, "
                            f"hidden size {settings['hidden_size']})")
        wrapped.beacon.load_state_dict(state)
        return wrapped
