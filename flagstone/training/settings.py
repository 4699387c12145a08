"""The training settings and their defaults, in one light module (no numpy or torch) so the CLI builds its
options from these very defaults instead of repeating the numbers.

The defaults are the settings tuned on SciFact's held-out *train* queries and reported in the README
(``benchmarks/tune_training.py``, ``benchmarks/train_scifact.py``, ``benchmarks/rerank_scifact.py``):
learning rate 1e-4, 3 epochs (2 for BGE-M3's unified training of several heads), bfloat16 autocast (the
default "auto" precision keeps it only on CPUs that compute bfloat16 natively);
embedders: temperature 0.05, batches of 16 queries x (1 positive + 3 hard negatives) plus in-batch
negatives; cross-encoders: groups of 1 positive + 7 negatives, 4 groups a batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

HEADS = ("dense", "sparse", "colbert")
# BGE-M3's weights for the heads' losses and for the ensemble score (dense 1, sparse 0.3, ColBERT 1)
HEAD_WEIGHTS = {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}
# unified training of several heads was tuned to 2 epochs: the ColBERT head and the ensemble peak there
M3_EPOCHS = 2
# cross-encoder training (train_cross_encoder's defaults)
RERANKER_GROUP_SIZE = 8  # 1 positive + 7 hard negatives
RERANKER_BATCH_SIZE = 4  # groups per micro-batch
RERANKER_MAX_LENGTH = 256  # tokens per (query, passage) pair


@dataclass
class TrainingConfig:
    """The optimiser, schedule and precision of :func:`flagstone.training.loop.train`."""

    epochs: int = 3
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # optimiser steps; caps epochs
    checkpoint_every: int | None = None  # optimiser steps between resumable checkpoints
    seed: int = 0
    # "bfloat16" autocasts the forward pass (about 2x faster on CPUs with AVX-512 BF16; what the tuned runs
    # used); "float32" computes in full precision; "auto" (the default) is bfloat16 where the CPU has native
    # bfloat16 (AVX512-BF16 or AMX) and float32 elsewhere: emulated, bfloat16 was ~5x slower than float32
    precision: str = "auto"
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        if self.epochs < 1 or self.gradient_accumulation < 1:
            raise ValueError("epochs and gradient_accumulation must be at least 1")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")


@dataclass
class EmbedderTrainingSettings:
    """What the contrastive objective looks like (the optimiser and schedule are in TrainingConfig)."""

    heads: tuple[str, ...] = ("dense",)
    temperature: float = 0.05
    group_size: int = 4  # one positive + group_size - 1 hard negatives per query
    batch_size: int = 16  # queries per micro-batch
    in_batch_negatives: bool = True  # other queries' passages are negatives too (dense and ColBERT)
    query_max_length: int = 64
    passage_max_length: int = 192  # the tuned runs (benchmarks/train_scifact.py) trained at 192
    distill: bool = True  # use pos_scores / neg_scores as soft targets when the data has them
    teacher_temperature: float = 1.0
    self_distill: bool = True  # M3: the ensemble of the trained heads teaches each head
    freeze_encoder: bool = False  # train only the heads (e.g. sparse-only training on a frozen encoder)
    gradient_checkpointing: bool = False
    lora_rank: int | None = None  # train LoRA adapters (peft) instead of the full encoder
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")
    query_instruction: str | None = None  # None: the base model's (e.g. BGE's retrieval instruction)
    head_weights: dict[str, float] = field(default_factory=lambda: dict(HEAD_WEIGHTS))
    head_learning_rate_scale: float = 20.0  # new sparse / ColBERT heads learn this much faster than the encoder
    # how a new sparse head starts: "idf" fits it to the square root of each token's inverse document
    # frequency over the training passages (so q.d starts as IDF-weighted term overlap); "uniform" gives
    # every token about the same weight (plain term overlap, stop words included)
    sparse_init: str = "idf"
    sparse_init_scale: float = 0.1  # initial weights ~ scale * sqrt(idf): scores near BGE-M3's range
    # SPLADE's FLOPS regulariser on the sparse head, (query, passage) weights: sum over the vocabulary of the
    # squared mean weight of each term in the micro-batch, so few terms stay active and the index stays small;
    # (0, 0) (the default) leaves it out
    flops_weights: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        unknown = set(self.heads) - set(HEADS)
        if unknown or not self.heads:
            raise ValueError(f"heads must be a non-empty subset of {HEADS}, got {self.heads}")
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (one positive and one negative)")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if len(self.flops_weights) != 2 or min(self.flops_weights) < 0:
            raise ValueError(
                f"flops_weights must be two non-negative numbers (query, passage), got {self.flops_weights}")
        if any(self.flops_weights) and "sparse" not in self.heads:
            raise ValueError("flops_weights regularise the sparse head: train it (heads must include 'sparse')")
        if self.sparse_init not in ("idf", "uniform"):
            raise ValueError(f"sparse_init must be 'idf' or 'uniform', got {self.sparse_init!r}")


def default_epochs(heads: Sequence[str]) -> int:
    """The tuned number of epochs: TrainingConfig's for the dense head alone, M3_EPOCHS for anything else
    (several heads, or a sparse / ColBERT head)."""
    return TrainingConfig.epochs if tuple(heads) == ("dense",) else M3_EPOCHS
