"""Embedder training: contrastive fine-tuning (InfoNCE with hard and in-batch negatives), knowledge
distillation from teacher scores, and BGE-M3's unified training of dense, sparse and ColBERT heads with the
ensemble score as a self-distillation teacher.

The saved folder is a normal Hugging Face encoder folder (plus the sentence-transformers files of the base,
so pooling carries over) and, when those heads were trained, ``sparse_linear.pt`` / ``colbert_linear.pt``
in BGE-M3's layout: it loads in :class:`flagstone.Embedder` and in FlagEmbedding's ``BGEM3FlagModel``.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flagstone._io import MODEL_LAYOUT, atomic_folder, check_output_folder
from flagstone.errors import DataError, require_extra
from flagstone.models.embedder import (
    COLBERT_HEAD_FILE,
    SPARSE_HEAD_FILE,
    Embedder,
)
from flagstone.models.heads import encoder_forward, sparse_vocab_weights
from flagstone.retrieval.bm25 import lucene_idf
from flagstone.training.data import TrainingExample, unique_passages
from flagstone.training.loop import (
    TrainingResult,
    clear_checkpoint,
    seed_everything,
    soft_cross_entropy,
    train,
)
from flagstone.training.settings import (  # noqa: F401 -- HEADS, HEAD_WEIGHTS: re-exported
    HEAD_WEIGHTS,
    HEADS,
    EmbedderTrainingSettings,
    TrainingConfig,
    default_epochs,
)

if TYPE_CHECKING:
    import torch


class _Trainable:
    """The encoder and its heads as one torch module, scoring queries against passages per head."""

    def __init__(self, base: Embedder, settings: EmbedderTrainingSettings) -> None:
        import torch

        self.base, self.settings = base, settings
        encoder = base.model
        encoder.train()
        if settings.gradient_checkpointing:
            encoder.gradient_checkpointing_enable()
        if settings.lora_rank:
            require_extra("train", ("peft",), "LoRA training needs")
            from peft import LoraConfig, get_peft_model

            targets = [t for t in settings.lora_targets if any(n.endswith(t) for n, _ in encoder.named_modules())]
            encoder = get_peft_model(encoder, LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                                         target_modules=targets, lora_dropout=0.0))
        hidden = base.dim
        sparse, colbert = base.sparse_head, base.colbert_head
        if sparse is None:  # a new head starts as plain term overlap: every token weighs about the same
            sparse = torch.nn.Linear(hidden, 1)
            torch.nn.init.normal_(sparse.weight, std=0.01)
            torch.nn.init.constant_(sparse.bias, 1.0)
        if colbert is None:  # a new head starts as the encoder's own token vectors (late interaction on them)
            colbert = torch.nn.Linear(hidden, hidden)
            with torch.no_grad():
                colbert.weight.copy_(torch.eye(hidden))
                colbert.bias.zero_()
        self.module = torch.nn.ModuleDict({"encoder": encoder, "sparse": sparse.float(), "colbert": colbert.float()})
        # the embedder trains in place: heads being trained are its heads, so validation hooks can use them
        if "sparse" in settings.heads:
            base.sparse_head = self.module["sparse"]
        if "colbert" in settings.heads:
            base.colbert_head = self.module["colbert"]
        for name in ("sparse", "colbert"):
            self.module[name].requires_grad_(name in settings.heads)
        if settings.freeze_encoder:
            encoder.requires_grad_(False)
        self.special_ids = torch.from_numpy(base.special_token_ids)  # the tokens inference gives no weight

    def outputs(self, texts: list[str], max_length: int, *, formatted: bool = False) -> dict[str, torch.Tensor]:
        """The trained heads' outputs for ``texts`` through the same tokenisation and forward as
        :meth:`Embedder.encode`; sparse weights spread over the vocabulary. Documents get the embedder's document
        template (passage instruction or prompt) as :meth:`Embedder.encode` gives it; ``formatted`` texts (queries
        with their instruction already applied) are tokenised as they are."""
        heads = self.settings.heads
        raw = {"prompt": ""} if formatted else {}  # an empty prompt: no template on top of the formatted text
        token_ids = self.base.tokenize(texts, max_length=max_length, **raw)
        side = self.base.batch_padding_side(sparse="sparse" in heads, colbert="colbert" in heads)
        input_ids, mask = self.base.pad(token_ids, side=side)
        out = encoder_forward(self.module["encoder"], input_ids, mask, pooling=self.base.settings.pooling,
                              normalize=self.base.settings.normalize, dense="dense" in heads,
                              sparse_head=self.module["sparse"] if "sparse" in heads else None,
                              colbert_head=self.module["colbert"] if "colbert" in heads else None,
                              special_ids=self.special_ids)
        result = {}
        if out.dense is not None:
            result["dense"] = out.dense
        if out.sparse is not None:
            result["sparse"] = sparse_vocab_weights(out.sparse, input_ids, self.base.vocab_size)
        if out.colbert is not None:
            result["colbert"], result["colbert_mask"] = out.colbert, out.colbert_mask
        return result

    @staticmethod
    def scores(q: dict[str, torch.Tensor], p: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        """(queries, passages) scores for one head."""
        import torch

        if head == "dense":
            return q["dense"].float() @ p["dense"].float().T
        if head == "sparse":
            return q["sparse"] @ p["sparse"].T
        token = torch.einsum("qid,pjd->qpij", q["colbert"], p["colbert"])
        token = token.masked_fill(p["colbert_mask"][None, :, None, :] == 0, -1e4)
        best = token.max(dim=-1).values * q["colbert_mask"][:, None, :]
        return best.sum(-1) / q["colbert_mask"].sum(-1, keepdim=True).clamp(min=1)


def _sample_batches(examples: Sequence[TrainingExample], settings: EmbedderTrainingSettings, seed: int):
    rng = np.random.default_rng(seed)
    missing = [i for i, ex in enumerate(examples) if not ex.neg]
    if missing:
        raise DataError(f"training example #{missing[0]} has no negatives: mine hard negatives first")
    groups = []
    need = settings.group_size - 1
    for i in rng.permutation(len(examples)):
        ex = examples[i]
        p = int(rng.integers(len(ex.pos)))
        negs = rng.choice(len(ex.neg), size=need, replace=len(ex.neg) < need)
        teacher = None
        if settings.distill and ex.pos_scores is not None and ex.neg_scores is not None:
            teacher = [ex.pos_scores[p]] + [ex.neg_scores[j] for j in negs]
        query = (ex.prompt or "") + ex.query
        groups.append((query, [ex.pos[p]] + [ex.neg[j] for j in negs], teacher))
    return [groups[s: s + settings.batch_size] for s in range(0, len(groups), settings.batch_size)]


def flops_penalty(weights: torch.Tensor) -> torch.Tensor:
    """SPLADE's FLOPS regulariser of a batch of vocabulary-wide sparse weights ``(texts, vocab)``: the sum
    over terms of the squared mean weight, a smooth stand-in for the expected cost of scoring a document."""
    return (weights.mean(dim=0) ** 2).sum()


def train_embedder(
    base: str | os.PathLike[str] | Embedder,
    examples: Sequence[TrainingExample],
    output_dir: str | os.PathLike[str],
    *,
    settings: EmbedderTrainingSettings | None = None,
    config: TrainingConfig | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> TrainingResult:
    """Fine-tune ``base`` on (query, positive, negatives) examples and save the result to ``output_dir``.

    ``output_dir`` is checked before training: an existing non-empty folder is replaced only with
    ``overwrite=True`` and only when Flagstone wrote it (:func:`flagstone._io.check_output_folder`).

    Each query is scored against its own group (positive first) and, with ``in_batch_negatives``, against
    every other passage in the micro-batch; the loss is cross-entropy with the positive as the target at
    ``temperature``. With teacher scores in the data (``distill``), the group's target is the teacher's
    softmax instead. With several heads, each head has that loss, their weighted ensemble has it too, and
    (``self_distill``) the ensemble's distribution teaches every head, as in BGE-M3. An :class:`Embedder`
    passed as ``base`` is trained in place (its settings, e.g. pooling, are what the saved folder records).
    """
    import torch

    check_output_folder(output_dir, overwrite=overwrite, legacy=MODEL_LAYOUT)
    settings = settings or EmbedderTrainingSettings()
    config = config or TrainingConfig(epochs=default_epochs(settings.heads))
    seed_everything(config.seed)
    embedder = base if isinstance(base, Embedder) else Embedder(str(base), show_progress=False)
    if embedder.settings.splade:
        raise ValueError(f"{embedder.name!r} is a SPLADE model: training trains dense, M3 sparse and ColBERT heads, "
                         f"not a masked-LM head")
    if embedder.settings.dtype != "float32":
        raise ValueError("train from a float32 embedder (use TrainingConfig(precision='bfloat16') for speed)")
    if (embedder.settings.backend, embedder.settings.precision) != ("torch", "float32"):
        raise ValueError("train from an embedder on the torch backend in float32 (exported graphs do not "
                         "back-propagate)")
    if "sparse" in settings.heads and embedder.sparse_head is None and settings.sparse_init == "idf":
        embedder.sparse_head = idf_sparse_head(embedder, unique_passages(examples), scale=settings.sparse_init_scale,
                                               max_length=settings.passage_max_length, seed=config.seed)
    trainable = _Trainable(embedder, settings)
    # the base model's query instruction in its format (decoder embedders wrap the query), unless set here
    prefix, suffix = embedder.text_template(is_query=True) if settings.query_instruction is None \
        else (settings.query_instruction, "")
    heads = settings.heads
    weights = {h: settings.head_weights.get(h, 1.0) for h in heads}

    def loss_fn(batch) -> torch.Tensor:
        queries = [prefix + q + suffix for q, _, _ in batch]
        passages = [t for _, texts, _ in batch for t in texts]
        q = trainable.outputs(queries, settings.query_max_length, formatted=True)
        p = trainable.outputs(passages, settings.passage_max_length)
        n, g = len(batch), settings.group_size
        own = torch.arange(n)[:, None] * g + torch.arange(g)[None, :]  # each query's group columns
        targets = own[:, 0]  # the positive's column
        scores = {h: trainable.scores(q, p, h).float() / settings.temperature for h in heads}
        if not settings.in_batch_negatives:
            scores = {h: s.gather(1, own) for h, s in scores.items()}
            targets = torch.zeros(n, dtype=torch.long)
        teacher = None
        if batch[0][2] is not None:
            t = torch.tensor([row[2] for row in batch], dtype=torch.float32) / settings.teacher_temperature
            teacher = torch.softmax(t, dim=-1)

        def head_loss(s: torch.Tensor) -> torch.Tensor:
            if teacher is None:
                return torch.nn.functional.cross_entropy(s, targets)
            group = s if not settings.in_batch_negatives else s.gather(1, own)
            return soft_cross_entropy(group, teacher)

        losses = {h: head_loss(s) for h, s in scores.items()}
        if len(heads) == 1:
            total = losses[heads[0]]
        else:
            ensemble = sum(weights[h] * scores[h] for h in heads)
            total = sum(weights[h] * losses[h] for h in heads) + head_loss(ensemble)
            if settings.self_distill:
                target = torch.softmax(ensemble.detach(), dim=-1)
                distilled = sum(weights[h] * soft_cross_entropy(scores[h], target) for h in heads)
                total = (total + distilled) / 2
        query_flops, passage_flops = settings.flops_weights
        if query_flops:
            total = total + query_flops * flops_penalty(q["sparse"])
        if passage_flops:
            total = total + passage_flops * flops_penalty(p["sparse"])
        return total

    def batches(epoch: int):
        return _sample_batches(examples, settings, config.seed + epoch)

    scales = {id(p): settings.head_learning_rate_scale
              for name in ("sparse", "colbert") for p in trainable.module[name].parameters()}
    result = train(trainable.module, batches, loss_fn, config, checkpoint_dir=checkpoint_dir, on_step=on_step,
                   lr_scales=scales)
    save_embedder(trainable, output_dir, overwrite=overwrite)
    if checkpoint_dir is not None:
        clear_checkpoint(checkpoint_dir)
    return result


def idf_sparse_head(
    embedder: Embedder,
    passages: Sequence[str],
    *,
    scale: float = 0.1,
    max_length: int = 256,
    fit_passages: int = 300,
    seed: int = 0,
) -> torch.nn.Linear:
    """A new sparse head (BGE-M3's ``Linear(hidden, 1)``) whose weights start near ``scale * sqrt(idf)``.

    IDF (BM25's form) is counted over ``passages``; the head is the ridge least-squares fit from the
    encoder's token states to those targets on ``fit_passages`` of them. A query and a passage sharing a
    token then score about ``scale**2 * idf``, so the untrained head already ranks like IDF-weighted term
    overlap, and training refines weights in context instead of first unlearning stop words.
    """
    import torch

    if not passages:
        raise DataError("no passages to count term frequencies over")
    token_ids = embedder.tokenize(passages, max_length=max_length)
    doc_freq = np.zeros(embedder.vocab_size)
    for ids in token_ids:
        doc_freq[np.unique(ids)] += 1
    n = len(token_ids)
    target = scale * np.sqrt(lucene_idf(doc_freq, n))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=min(fit_passages, n), replace=False)
    states, targets = [], []
    special = torch.from_numpy(embedder.special_token_ids)  # the tokens inference gives no weight
    embedder.model.eval()
    with torch.inference_mode(), torch.autocast(torch.device(embedder.device).type, dtype=torch.bfloat16):
        for start in range(0, len(chosen), 16):
            batch = [token_ids[i] for i in chosen[start: start + 16]]
            input_ids, mask = embedder.pad(batch)
            hidden = embedder.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
            keep = mask.bool() & ~torch.isin(input_ids, special.to(input_ids.device))
            states.append(hidden[keep].cpu().numpy().astype(np.float64))
            targets.append(target[input_ids[keep].cpu().numpy()])
    x = np.concatenate(states)
    x = np.hstack([x, np.ones((len(x), 1))])
    solution = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ np.concatenate(targets))
    head = torch.nn.Linear(x.shape[1] - 1, 1)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(solution[:-1]).float()[None])
        head.bias.fill_(float(solution[-1]))
    return head


def _checkpoint_keys(folder: Path) -> set[str]:
    """Parameter names stored in a folder's model.safetensors (empty when it has another format)."""
    file = folder / "model.safetensors"
    if not file.is_file():
        return set()
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return set(handle.keys())


def _write_sentence_transformers_files(folder: Path, settings) -> None:
    """Record pooling, normalisation and max length the sentence-transformers way, so the trained folder
    embeds exactly as it was trained (in Flagstone and in sentence-transformers)."""
    import json

    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if settings.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    hidden = json.loads((folder / "config.json").read_text()).get("hidden_size")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": settings.pooling == "cls",
        "pooling_mode_mean_tokens": settings.pooling == "mean", "pooling_mode_lasttoken": settings.pooling == "last_token",
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": settings.max_length,
                                                                  "do_lower_case": False}, indent=2))


def save_embedder(trainable: _Trainable, output_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Save encoder + tokenizer (+ the base's sentence-transformers files, + trained M3 heads) atomically."""
    import torch

    target = Path(output_dir)
    with atomic_folder(target, overwrite=overwrite, legacy=MODEL_LAYOUT) as staging:
        encoder = trainable.module["encoder"]
        if hasattr(encoder, "merge_and_unload"):  # LoRA: fold the adapters into the weights
            encoder = encoder.merge_and_unload()
        state = encoder.state_dict()
        base_keys = _checkpoint_keys(trainable.base.path)
        if base_keys:  # keep the base's parameter set: an unused pooler the loader added is not saved
            state = {k: v for k, v in state.items() if k in base_keys}
        encoder.save_pretrained(staging, state_dict=state)
        trainable.base.tokenizer.save_pretrained(staging)
        base_folder = trainable.base.path
        for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
            if (base_folder / name).is_file():
                shutil.copy2(base_folder / name, staging / name)
        for sub in base_folder.iterdir():  # sentence-transformers module folders: 1_Pooling, 2_Normalize
            if sub.is_dir() and sub.name[:1].isdigit() and "_" in sub.name and sub.name != "0_Transformer":
                shutil.copytree(sub, staging / sub.name, dirs_exist_ok=True)
        if not (staging / "modules.json").is_file():
            _write_sentence_transformers_files(staging, trainable.base.settings)
        for head, filename in (("sparse", SPARSE_HEAD_FILE), ("colbert", COLBERT_HEAD_FILE)):
            if head in trainable.settings.heads or (base_folder / filename).is_file():
                state = {k: v.detach().float().cpu() for k, v in trainable.module[head].state_dict().items()}
                torch.save(state, staging / filename)
    return target
