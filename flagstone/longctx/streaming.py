"""Attention sinks + recent window (StreamingLLM), and the KV accounting that puts it at the same memory as
Activation Beacon.

``SinkRecentLM`` keeps the first ``sink`` tokens' KV and the most recent ones, never more than ``budget``
entries: each token attends to at most ``budget`` entries, itself included. As in StreamingLLM, positions are
those inside the cache (the sink at 0.., the recent tokens right after), so a long input never reaches
positions the model was not trained on. Input is read in chunks of ``chunk`` tokens for speed: before a chunk
the cache is cut to ``budget - chunk`` entries, so no token of the chunk sees more than ``budget`` (with
``chunk=1`` every token sees exactly ``budget`` once the input is that long).

``beacon_kv_entries`` is the same quantity for :class:`~flagstone.longctx.beacon.BeaconLM`: the most entries
(memory + open window) any raw token attends to while a fixed-ratio beacon reads ``tokens`` tokens. Giving
that number as ``budget`` compares the two at exactly equal KV memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from flagstone.longctx.beacon import KV, LayerwiseDecoder


def beacon_kv_entries(tokens: int, window: int, ratio: int, sink: int) -> int:
    """Most KV entries a raw token attends to (itself included) while a beacon of ``window`` raw tokens per
    window, compression ``ratio`` and ``sink`` uncompressed first tokens reads ``tokens`` tokens."""
    if tokens < 1 or window < 1 or ratio < 1 or window % ratio or sink < 0:
        raise ValueError("tokens, window and ratio must be positive, ratio must divide the window, sink >= 0")
    full_windows_before_last = (tokens - 1) // window  # windows compressed before the last token arrives
    open_tokens = tokens - full_windows_before_last * window  # the last token's open window, itself included
    if full_windows_before_last == 0:
        return open_tokens
    memory = min(sink, window) + full_windows_before_last * (window // ratio)
    # the memory only grows, so the peak is at the end of the last full window or at the last token
    previous = min(sink, window) + (full_windows_before_last - 1) * (window // ratio) + window
    return max(memory + open_tokens, previous if full_windows_before_last > 1 else window)


@dataclass
class SinkRecentState:
    cache: KV = field(default_factory=lambda: KV([], []))
    tokens_seen: int = 0
    peak_entries: int = 0  # the most entries any token attended to, itself included

    def kv_bytes(self) -> int:
        return self.cache.nbytes()


class SinkRecentLM(LayerwiseDecoder):
    """A causal LM reading unlimited input with a fixed KV budget: ``sink`` first tokens + the most recent."""

    def __init__(self, model: nn.Module, *, budget: int, sink: int = 4, chunk: int = 32) -> None:
        super().__init__(model)
        if sink < 0 or chunk < 1 or budget < sink + chunk:
            raise ValueError(f"need sink >= 0, chunk >= 1 and budget >= sink + chunk (got budget={budget}, "
                             f"sink={sink}, chunk={chunk})")
        self.budget, self.sink, self.chunk = budget, sink, chunk

    def _evict(self, cache: KV, keep: int) -> KV:
        """The sink and the most recent entries, ``keep`` in all."""
        if cache.length <= keep:
            return cache
        recent = keep - self.sink
        return KV([torch.cat([k[:, :, :self.sink], k[:, :, k.shape[2] - recent:]], dim=2) for k in cache.keys],
                  [torch.cat([v[:, :, :self.sink], v[:, :, v.shape[2] - recent:]], dim=2) for v in cache.values])

    @torch.no_grad()
    def feed(self, ids: torch.Tensor | Sequence[int], state: SinkRecentState | None = None, *,
             logits: bool = True) -> tuple[torch.Tensor | None, SinkRecentState]:
        """Read ``ids`` (1-D or (1, n)); returns the logits of every token read (or None) and the new state."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        state = state if state is not None else SinkRecentState()
        out = []
        for at in range(0, ids.shape[1], self.chunk):
            piece = ids[:, at:at + self.chunk]
            n = piece.shape[1]
            cache = self._evict(state.cache, self.budget - n)
            state.peak_entries = max(state.peak_entries, cache.length + n)
            hidden, new = self._read(piece, cache, KV([], []))
            state.cache = cache.append(new.keys, new.values)
            state.tokens_seen += n
            if logits:
                out.append(self._logits(hidden))
        state.cache = self._evict(state.cache, self.budget)
        return (torch.cat(out, dim=1) if out else None), state
