"""The news recommender's settings and their defaults, in a light module (no torch) the CLI builds its options
from."""
from __future__ import annotations

from dataclasses import dataclass

from flagstone.errors import FlagstoneError

KINDS = ("base", "gateformer", "sfi")


@dataclass(frozen=True)
class NewsRecConfig:
    """The model's shape; saved with it (config.json)."""

    kind: str = "base"  # base | gateformer | sfi
    dim: int = 64
    heads: int = 4
    layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.1
    title_length: int = 20  # title tokens kept (MIND titles: about 11 words on average)
    max_history: int = 50  # most recent clicks read per user (NRMS's setting on MIND)
    gate_k: int = 4  # gateformer: tokens kept per clicked title
    gate_dim: int = 32  # gateformer: the gate's embedding width
    select_k: int = 5  # sfi: history items selected per candidate

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FlagstoneError(f"unknown news recommender {self.kind!r}: choose one of {', '.join(KINDS)}")
        for name in ("dim", "heads", "layers", "ff_dim", "title_length", "max_history", "gate_k", "gate_dim",
                     "select_k"):
            if getattr(self, name) < 1:
                raise FlagstoneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise FlagstoneError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise FlagstoneError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class NewsRecTraining:
    """The MIND objective and the optimiser: for every click of a training impression, a softmax over the
    clicked item and ``negatives`` items of the same impression that were not clicked (drawn with replacement
    when the impression has fewer)."""

    negatives: int = 4  # NRMS's npratio
    batch_size: int = 32  # clicks per step
    epochs: int = 2
    learning_rate: float = 2e-3
    max_steps: int | None = None
    selector_loss_weight: float = 0.5  # sfi: weight of the selector's auxiliary click loss
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.negatives < 1 or self.batch_size < 1 or self.epochs < 1:
            raise FlagstoneError("negatives, batch_size and epochs must be at least 1")
        if self.learning_rate <= 0:
            raise FlagstoneError("learning_rate must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise FlagstoneError("max_steps must be at least 1")
