"""Cross-encoder reranker training: groupwise softmax over one positive and its hard negatives, optionally with
listwise distillation from a teacher's scores of the same group."""
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
    soft_cross_entropy,
    train,
)
from flagstone.training.settings import (
    RERANKER_BATCH_SIZE,
    RERANKER_GROUP_SIZE,
    RERANKER_MAX_LENGTH,
    TrainingConfig,
)

Group = tuple[str, list[str], "list[float] | None"]


def check_examples(examples: Sequence[TrainingExample], *, with_teacher: bool = False) -> None:
    """Raise DataError for the first example that cannot form a group: no negatives, or (``with_teacher``)
    no teacher scores."""
    no_negatives = [i for i, ex in enumerate(examples) if not ex.neg]
    if no_negatives:
        raise DataError(f"training example #{no_negatives[0]} has no negatives: mine hard negatives first")
    if with_teacher:
        unscored = [i for i, ex in enumerate(examples) if ex.pos_scores is None or ex.neg_scores is None]
        if unscored:
            raise DataError(f"training example #{unscored[0]} has no teacher scores (pos_scores / neg_scores): "
                            "score every example with the teacher first (flagstone.training.mining.add_teacher_scores)")


def sample_groups(examples: Sequence[TrainingExample], group_size: int, batch_size: int,
                  seed: int, *, with_teacher: bool = False) -> list[list[Group]]:
    """Batches of (query, [positive, negative, ...], teacher scores) groups for one epoch, shuffled by ``seed``.

    Each group holds one positive (drawn at random when there are several) and ``group_size - 1``
    negatives, drawn without replacement when there are enough and with replacement otherwise. With
    ``with_teacher`` every example must carry ``pos_scores`` and ``neg_scores``, and each group the teacher's
    scores of its texts in the same order; otherwise the third item is None. The draws do not depend on it.
    """
    if group_size < 2:
        raise ValueError("group_size must be at least 2 (one positive and one negative)")
    check_examples(examples, with_teacher=with_teacher)
    rng = np.random.default_rng(seed)
    groups = []
    for i in rng.permutation(len(examples)):
        ex = examples[i]
        p = int(rng.integers(len(ex.pos)))
        need = group_size - 1
        idx = rng.choice(len(ex.neg), size=need, replace=len(ex.neg) < need)
        teacher = [ex.pos_scores[p]] + [ex.neg_scores[j] for j in idx] if with_teacher else None
        groups.append((ex.query if ex.prompt is None else ex.prompt + ex.query, [ex.pos[p]] + [ex.neg[j] for j in idx],
                       teacher))
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
    distill_weight: float = 0.0,
    teacher_temperature: float = 1.0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> TrainingResult:
    """Fine-tune ``base`` (any encoder checkpoint, or an existing cross-encoder) into a one-logit
    cross-encoder and save it in the Hugging Face sequence-classification format at ``output_dir``.

    The loss is cross-entropy over each group's scores with the positive as the target (FlagEmbedding's
    reranker loss). With ``distill_weight`` > 0 the loss is listwise distillation mixed in: (1 - distill_weight)
    x that loss + distill_weight x the cross-entropy between the teacher's softmax over the group (its
    ``pos_scores`` / ``neg_scores`` divided by ``teacher_temperature``) and the model's; every example must then
    carry teacher scores. ``batch_size`` groups form one micro-batch; ``config.gradient_accumulation`` more.
    ``on_step(step, loss)`` is called after every optimiser step (an evaluation hook). ``output_dir`` is
    checked before training (an existing one needs ``overwrite=True``, see :func:`flagstone._io.check_output_folder`).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from flagstone.models.embedder import resolve_model_path, transformer_folder

    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
    if teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
    distill = distill_weight > 0
    check_examples(examples, with_teacher=distill)  # bad data fails before the model loads
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
        return sample_groups(examples, group_size, batch_size, config.seed + epoch, with_teacher=distill)

    def loss_fn(batch):
        pairs = [(q, t) for q, texts, _ in batch for t in texts]
        inputs = encode_pairs(tokenizer, pairs, max_length, max_query_length)
        logits = model(**inputs).logits.view(len(batch), group_size).float()
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        if not distill:
            return loss
        teacher = torch.tensor([t for _, _, t in batch], dtype=torch.float32) / teacher_temperature
        listwise = soft_cross_entropy(logits, torch.softmax(teacher, dim=-1))
        return (1 - distill_weight) * loss + distill_weight * listwise

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
