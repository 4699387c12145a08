"""The settings of a generative retriever's model and training (plain data: importing this module is cheap)."""
from __future__ import annotations

from dataclasses import dataclass

PSEUDO_QUERY_SOURCES = ("spans", "llm", "llm+spans")


@dataclass(frozen=True)
class GenIRModelConfig:
    """The shape of the randomly initialised Llama-architecture decoder (tied input/output embeddings)."""

    # small enough to train on SciFact on 2 CPU cores in minutes (about 4.5M parameters, most in the embeddings)
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 384
    max_text_tokens: int = 48  # a text (document, pseudo-query or query) is cut to this many tokens

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "max_text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class GenIRTrainingSettings:
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.05
    pseudo_queries: int = 3  # per document and epoch: the first sentence, then random spans
    # where pseudo-queries come from: "spans" (cut from the document afresh every epoch) or "llm" (written once
    # by a chat LM, see flagstone.genir.query_generation, and passed to training as ``generated_queries``; every
    # usable one is shown every epoch, and ``pseudo_queries`` is then how many were asked per document) or
    # "llm+spans" (both: ``pseudo_queries`` spans per document and epoch plus every generated query)
    pseudo_query_source: str = "spans"
    span_words: tuple[int, int] = (8, 20)
    document_tokens: int = 48  # the indexing example: the document's opening tokens
    seed: int = 0
    show_progress: bool = True
    # a wall-clock budget: training stops after the epoch during which it runs out (None: all epochs). The
    # learning rate still follows the schedule of ``epochs``, so a cut run ends before its rate has decayed.
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        if self.epochs < 1 or self.batch_size < 1 or self.document_tokens < 1:
            raise ValueError("epochs, batch_size and document_tokens must be at least 1")
        if self.learning_rate <= 0 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("learning_rate must be positive and warmup_fraction in [0, 1)")
        if self.pseudo_query_source not in PSEUDO_QUERY_SOURCES:
            raise ValueError(f"pseudo_query_source must be one of {PSEUDO_QUERY_SOURCES}, got "
                             f"{self.pseudo_query_source!r}")
        if self.pseudo_queries < 0:
            raise ValueError("pseudo_queries must not be negative")
        low, high = self.span_words
        if not 1 <= low <= high:
            raise ValueError(f"span_words must be (low, high) with 1 <= low <= high, got {self.span_words}")
