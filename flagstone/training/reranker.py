"""Cross-encoder reranker training: groupwise softmax over one positive and its hard negatives."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from flagstone._io import MODEL_LAYOUT, atomic_folder, check_output_folder
from flagstone.errors import DataError, ModelNotFoundError
from flagstone.models._hf import quiet_transformers
from flagstone.models.reranker import encode_pairs
from flagstone.training.data import TrainingExample
from flagstone.training.loop import (
    TrainingResult,
    clear_checkpoint,
    seed_everything,
    train,
)
from flagstone.training.settings import (
    RERANKER_BATCH_SIZE,
    RERANKER_GROUP_SIZE,
    RERANKER_MAX_LENGTH,
    TrainingConfig,
)


def sample_groups(examples: Sequence[TrainingExample], group_size: int, batch_size: int,
                  seed: int) -> list[list[tuple[str, list[str]]]]:
    """Batches of (query, [positive, negative, ...]) groups for one epoch, shuffled by ``seed``.

    Each group holds one positive (drawn at random when there are several) and ``group_size - 1``
    negatives, drawn without replacement when there are enough and with replacement otherwise.
    """
    if group_size < 2:
        raise ValueError("group_size must be at least 2 (one positive and one negative)")
    rng = np.random.default_rng(seed)
    no_negatives = [i for i, ex in enumerate(examples) if not ex.neg]
    if no_negatives:
        raise DataError(f"training example #{no_negatives[0]} has no negatives: mine hard negatives first")
    groups = []
    for i in rng.permutation(len(examples)):
        ex = examples[i]
        pos = ex.pos[rng.integers(len(ex.pos))]
        need = group_size - 1
        idx = rng.choice(len(ex.neg), size=need, replace=len(ex.neg) < need)
        groups.append((ex.query if ex.prompt is None else ex.prompt + ex.query, [pos] + [ex.neg[j] for j in idx]))
    return [groups[s: s + batch_size] for s in range(0, len(groups), batch_size)]


def train_cross_encoder(
    base: str | os.PathLike[str],
    examples: Sequence[TrainingExample],
    output_dir: str | os.PathLike[str],
    *,
    group_size: int = RERANKER_GROUP_SIZE,
    batch_size: int = RERANKER_BATCH_SIZE,
    max_length: int = RERANKER_MAX_LENGTH,
    max_query_length: int = 64,
    config: TrainingConfig | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> TrainingResult:
    """Fine-tune ``base`` (any encoder checkpoint, or an existing cross-encoder) into a one-logit
    cross-encoder and save it in the Hugging Face sequence-classification format at ``output_dir``.

    The loss is cross-entropy over each group's scores with the positive as the target (FlagEmbedding's
    reranker loss). ``batch_size`` groups form one micro-batch; ``config.gradient_accumulation`` more.
    ``on_step(step, loss)`` is called after every optimiser step (an evaluation hook). ``output_dir`` is
    checked before training (an existing one needs ``overwrite=True``, see :func:`flagstone._io.check_output_folder`).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flagstone.models.embedder import transformer_folder, resolve_model_path

    check_output_folder(output_dir, overwrite=overwrite, legacy=MODEL_LAYOUT)
    config = config or TrainingConfig()
    seed_everything(config.seed)  # the new head's initial weights come from the seeded generator
    root, _ = resolve_model_path(str(base))
    folder = transformer_folder(root)
    with quiet_transformers():  # a new classification head on an encoder is expected
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"could not load {folder} for reranker training: {exc}") from None

    def batches(epoch: int):
        return sample_groups(examples, group_size, batch_size, config.seed + epoch)

    def loss_fn(batch):
        pairs = [(q, t) for q, texts in batch for t in texts]
        inputs = encode_pairs(tokenizer, pairs, max_length, max_query_length)
        logits = model(**inputs).logits.view(len(batch), group_size).float()
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))

    result = train(model, batches, loss_fn, config, checkpoint_dir=checkpoint_dir, on_step=on_step)
    save_pretrained_atomic(model, tokenizer, output_dir, overwrite=overwrite)
    if checkpoint_dir is not None:
        clear_checkpoint(checkpoint_dir)
    return result


def save_pretrained_atomic(model, tokenizer, output_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save a model and tokenizer into a sibling temporary folder and swap it into ``output_dir``."""
    with atomic_folder(output_dir, overwrite=overwrite, legacy=MODEL_LAYOUT) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(output_dir)
