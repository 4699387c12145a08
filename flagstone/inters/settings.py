"""The LoRA tuning settings and their defaults, in a light module (no numpy or torch) so the CLI builds its
options from them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraSettings:
    """The adapter: rank, scale (alpha) and dropout; and the token budget of one training row."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    max_length: int = 640
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1 or self.max_length < 8 or self.batch_size < 1:
            raise ValueError("rank, alpha and batch_size must be at least 1 and max_length at least 8")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
