"""Extensible embeddings: a small trained extender turns each chunk of ``k`` context tokens into one embedding
that a frozen causal LM reads through ``inputs_embeds``, so a context of ``C`` tokens takes ``C / k`` positions.
The ratio ``k`` is chosen at inference; training samples a ratio per step, so one extender serves them all.

The extender (only its parameters train, the LM stays frozen: plug-and-play):

- context features: the frozen LM's own first ``encoder_layers`` decoder layers read the context causally
  (no gradients; the final norm is applied), so each token's feature already sees what came before it;
- per chunk, attention pooling of those features with one learned query (zero at start: a plain mean), then a
  two-layer MLP whose output layer starts at zero;
- plus the mean of the chunk's own input embeddings, so an untrained extender already emits a sensible
  "average token" and training learns a correction.

:class:`ExtensibleLM` lays out the LM input as ``[sink tokens][one embedding per chunk][recent tokens][raw
tokens]`` with consecutive positions: the raw tokens are the ones being read, and ``recent`` context tokens
just before them may stay uncompressed (under a budget of positions, this trades the oldest context for
exact recent tokens).
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flagstone._io import LegacyLayout, atomic_folder
from flagstone.errors import DataError, FlagstoneError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "extender.json"
WEIGHTS_FILE = "extender.safetensors"
EXTENDER_LAYOUT = LegacyLayout(CONFIG_FILE, frozenset({CONFIG_FILE, WEIGHTS_FILE}))
FORMAT_VERSION = 1


@dataclass
class ExtenderConfig:
    encoder_layers: int = 6  # frozen LM decoder layers that compute the context features
    mlp_hidden: int = 1024
    ratios: tuple[int, ...] = (2, 4, 8, 16)  # sampled in training; any ratio >= 1 works at inference
    sink: int = 1  # raw tokens kept at the start (the attention sink)
    hidden_size: int = 0  # the LM's, filled in from the model
    base_model: str = ""  # provenance only

    def __post_init__(self) -> None:
        if self.encoder_layers < 1 or self.mlp_hidden < 1 or self.sink < 0:
            raise ValueError("encoder_layers and mlp_hidden must be positive and sink not negative")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise ValueError(f"ratios must be positive integers, got {self.ratios}")
        self.ratios = tuple(int(r) for r in self.ratios)


def _check_ratio(k: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise FlagstoneError(f"compression ratio must be a positive integer, got {k!r}")
    return k


def _build_classes():
    """Define the torch modules on first use, so importing this module does not import torch."""
    import torch
    from torch import nn

    class _Extender(nn.Module):
        def __init__(self, lm, config: ExtenderConfig) -> None:
            super().__init__()
            layers = _decoder_layers(lm)
            if config.encoder_layers > len(layers):
                raise FlagstoneError(f"encoder_layers={config.encoder_layers} but the LM has {len(layers)} layers")
            config.hidden_size = int(lm.config.hidden_size)
            self.config = config
            h = config.hidden_size
            self.query = nn.Parameter(torch.zeros(h))
            self.norm = nn.LayerNorm(h)
            self.up = nn.Linear(h, config.mlp_hidden)
            self.down = nn.Linear(config.mlp_hidden, h)
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)
            object.__setattr__(self, "_lm", lm)  # not a submodule: never trained, never saved with the extender

        def features(self, ids: torch.Tensor) -> torch.Tensor:
            """(1, C, h) features of the context tokens from the frozen LM's first layers (no gradients)."""
            with torch.no_grad():
                return _prefix_hidden(self._lm, ids, self.config.encoder_layers)

        def forward(self, ids: torch.Tensor, k: int) -> torch.Tensor:
            """(1, C // k, h) embeddings for the first ``(C // k) * k`` tokens of ``ids`` (1, C)."""
            k = _check_ratio(k)
            n = ids.shape[1] // k
            if n == 0:
                return self._lm.get_input_embeddings().weight.new_zeros((1, 0, self.config.hidden_size))
            ids = ids[:, : n * k]
            feats = self.features(ids).reshape(1, n, k, -1)
            tokens = self._lm.get_input_embeddings()(ids).detach().reshape(1, n, k, -1)
            weights = torch.softmax(feats @ self.query / feats.shape[-1] ** 0.5, dim=2)  # (1, n, k)
            pooled = (weights.unsqueeze(-1) * feats).sum(2)
            correction = self.down(torch.nn.functional.gelu(self.up(self.norm(pooled))))
            return tokens.mean(2) + correction

    return _Extender


_CLASSES: dict[str, type] = {}


def _extender_class():
    if "Extender" not in _CLASSES:
        _CLASSES["Extender"] = _build_classes()
    return _CLASSES["Extender"]


def _decoder_layers(lm):
    inner = getattr(lm, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "embed_tokens") or not hasattr(inner, "rotary_emb"):
        raise FlagstoneError(f"{type(lm).__name__} is not a Llama-style decoder (model.layers, embed_tokens, "
                             "rotary_emb): extensible embeddings support that family")
    return layers


def _prefix_hidden(lm, ids, n_layers: int):
    """The normalised output of the first ``n_layers`` decoder layers over ``ids`` (causal attention)."""
    import copy

    inner = lm.model
    prefix = copy.copy(inner)  # a shallow copy that runs only the first layers; the weights are shared
    prefix._modules = dict(inner._modules)
    prefix._modules["layers"] = inner.layers[:n_layers]
    prefix.config = copy.copy(inner.config)
    prefix.config.num_hidden_layers = n_layers
    return prefix(input_ids=ids, use_cache=False).last_hidden_state


def new_extender(lm, config: ExtenderConfig | None = None):
    """An untrained extender for the causal LM ``lm`` (a transformers model)."""
    return _extender_class()(lm, config or ExtenderConfig())


def save_extender(extender, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    with atomic_folder(folder, overwrite=overwrite, legacy=EXTENDER_LAYOUT) as staging:
        save_file({k: v.detach().contiguous() for k, v in extender.state_dict().items()}, str(staging / WEIGHTS_FILE))
        (staging / CONFIG_FILE).write_text(json.dumps({"format": "flagstone-extender", "version": FORMAT_VERSION,
                                                       "config": asdict(extender.config)}, indent=2))
    return Path(folder)


def load_extender(lm, folder: str | os.PathLike):
    """An extender saved by :func:`save_extender`, attached to ``lm`` (whose hidden size must match)."""
    from safetensors.torch import load_file

    from flagstone._io import read_format_json

    path = Path(folder)
    meta = read_format_json(path / CONFIG_FILE, format_name="flagstone-extender", version=FORMAT_VERSION,
                            what="extender", kind="extender")
    config = ExtenderConfig(**{**meta["config"], "ratios": tuple(meta["config"]["ratios"])})
    if config.hidden_size != int(lm.config.hidden_size):
        raise DataError(f"{path}: the extender was trained for hidden size {config.hidden_size}, the model has "
                        f"{lm.config.hidden_size}")
    extender = new_extender(lm, config)
    extender.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return extender.eval()


@dataclass
class Layout:
    """How a text was laid out for the LM: ``positions`` = sink + compressed slots + recent raw + raw tokens."""

    sink: int
    dropped: int  # the oldest context tokens left out (fewer than k, or past ``max_slots``)
    compressed_tokens: int  # context tokens that went into the slots
    slots: int
    recent: int  # context tokens kept raw just before the raw ones
    raw: int
    positions: int = field(init=False)

    def __post_init__(self) -> None:
        self.positions = self.sink + self.slots + self.recent + self.raw


class ExtensibleLM:
    """A frozen causal LM reading ``[sink][extender(older context, k)][recent context][raw]`` through
    ``inputs_embeds``."""

    def __init__(self, lm, extender) -> None:
        self.lm = lm
        self.extender = extender
        for p in lm.parameters():
            p.requires_grad_(False)

    @property
    def sink(self) -> int:
        return self.extender.config.sink

    def layout(self, n_context: int, n_raw: int, k: int, *, recent: int = 0, max_slots: int | None = None) -> Layout:
        """Where the ``n_context`` tokens before ``n_raw`` raw ones go: the first ``sink`` and the last ``recent``
        stay raw; the tokens between become one slot per ``k`` (the most recent ones, at most ``max_slots``
        slots); what is left at the old end (fewer than k tokens, or past ``max_slots``) is dropped."""
        _check_ratio(k)
        if recent < 0 or (max_slots is not None and max_slots < 0):
            raise FlagstoneError("recent and max_slots must not be negative")
        sink = min(self.sink, n_context)
        recent = min(recent, n_context - sink)
        middle = n_context - sink - recent
        slots = middle // k if max_slots is None else min(middle // k, max_slots)
        return Layout(sink, middle - slots * k, slots * k, slots, recent, n_raw)

    def embeddings(self, context_ids: Sequence[int], raw_ids: Sequence[int], k: int, *, recent: int = 0,
                   max_slots: int | None = None) -> tuple[torch.Tensor, Layout]:
        """(inputs_embeds (1, positions, h), layout) for ``context_ids`` laid out as :meth:`layout` says, then
        ``raw_ids``."""
        import torch

        plan = self.layout(len(context_ids), len(raw_ids), k, recent=recent, max_slots=max_slots)
        embed = self.lm.get_input_embeddings()
        start = plan.sink + plan.dropped

        def tensor(ids) -> torch.Tensor:
            return torch.tensor([list(ids)], dtype=torch.long)

        compressed = tensor(context_ids[start:start + plan.compressed_tokens])
        slots = self.extender(compressed, k) if plan.slots else embed(compressed)[:, :0]
        kept_recent = context_ids[len(context_ids) - plan.recent:] if plan.recent else []
        parts = [embed(tensor(context_ids[: plan.sink])), slots, embed(tensor(kept_recent)), embed(tensor(raw_ids))]
        return torch.cat(parts, dim=1), plan

    def logits(self, context_ids: Sequence[int], raw_ids: Sequence[int], k: int, *, recent: int = 0,
               max_slots: int | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits (1, len(raw_ids), vocab) at the raw tokens, read after the laid-out context; with
        ``last_only`` just the last token's (1, 1, vocab), so no per-token logits are ever held."""
        embeds, plan = self.embeddings(context_ids, raw_ids, k, recent=recent, max_slots=max_slots)
        if last_only:
            return self.lm(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
        out = self.lm(inputs_embeds=embeds, use_cache=False).logits
        return out[:, plan.positions - plan.raw:]

    def loss(self, segment: Sequence[int], k: int, raw: int, *, recent: int = 0) -> torch.Tensor:
        """Next-token loss on the last ``raw`` tokens of ``segment``, the rest of it laid out at ``k`` with
        ``recent`` tokens kept raw."""
        import torch

        if len(segment) <= raw:
            raise DataError(f"a segment of {len(segment)} tokens leaves no context before {raw} raw tokens")
        context, target = segment[:-raw], segment[-raw:]
        logits = self.logits(context, target, k, recent=recent)[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, torch.tensor(list(target[1:])))


def train_extender(model: ExtensibleLM, segments: Sequence[Sequence[int]], config, *, raw: int,
                   ratio: int | None = None, recents: Sequence[int] = (0,), on_step=None):
    """Train only the extender: each segment's last ``raw`` tokens are predicted from the segment's earlier
    tokens compressed at a ratio drawn per micro-batch from the extender's ``ratios`` (or fixed ``ratio``), with
    a number of recent tokens kept raw drawn from ``recents``. ``config`` is a
    :class:`~flagstone.training.loop.TrainingConfig`."""
    from flagstone.training.loop import train

    if not segments:
        raise DataError("no training segments")
    order = list(segments)
    rng = random.Random(config.seed)
    ratios = model.extender.config.ratios

    def batches_for_epoch(epoch: int):
        shuffled = list(order)
        random.Random(config.seed + epoch).shuffle(shuffled)
        return shuffled

    def loss_fn(segment):
        return model.loss(segment, ratio or rng.choice(ratios), raw, recent=rng.choice(list(recents)))

    return train(model.extender, batches_for_epoch, loss_fn, config, on_step=on_step)
