"""Instruction-tune a causal LM on INTERS rows with LoRA (peft) and save the adapter.

Each row becomes one chat exchange (the prompt as the user's turn, the completion as the assistant's) when
the tokenizer has a chat template, else ``prompt + " " + completion + eos``; the loss covers the answer
tokens only (and the end-of-turn token, so the model learns to stop). The saved folder is a peft adapter
whose ``base_model_name_or_path`` is the model given here, so ``load_causal_lm(folder)`` and
``LLMReranker(folder)`` load it like any other model.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flagstone._io import atomic_folder, check_output_folder
from flagstone.errors import DataError, require_extra
from flagstone.models._hf import resolve_precision
from flagstone.training.loop import TrainingResult, train
from flagstone.inters.settings import LoraSettings
from flagstone.training.settings import TrainingConfig

# Llama-family projection names (SmolLM2 is one); only those the model has are used
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINING_FILE = "inters_training.json"


@dataclass
class TuningResult:
    output: Path
    rows_used: int
    rows_too_long: int  # rows whose prompt and answer exceed max_length: left out, counted here
    training: TrainingResult


def encode_row(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """(token ids of prompt and answer, number of prompt tokens): the loss starts after the prompt."""
    if getattr(tokenizer, "chat_template", None) is not None:
        head = list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False))
        full = list(tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                   {"role": "assistant", "content": completion}], tokenize=True,
                                                  return_dict=False))
        if full[: len(head)] != head:
            raise DataError("the chat template renders the prompt differently with and without the answer; "
                            "cannot tell the answer's tokens apart")
        return full, len(head)
    head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer = tokenizer(" " + completion, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return head + answer + eos, len(head)


def tune_lora(
    model: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    output: str | os.PathLike,
    *,
    lora: LoraSettings | None = None,
    config: TrainingConfig | None = None,
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> TuningResult:
    """Train a LoRA adapter for causal LM ``model`` on INTERS ``rows`` and save it (with the tokenizer and
    the settings, losses and row counts in ``inters_training.json``) to the folder ``output``."""
    import torch

    from flagstone.models.causal_lm import load_causal_lm

    require_extra("train", ("peft",), "LoRA instruction tuning needs")
    from peft import LoraConfig, get_peft_model

    lora = lora or LoraSettings()
    config = config or TrainingConfig(epochs=1, learning_rate=2e-4)
    check_output_folder(output, overwrite=overwrite)  # before any work
    lm = load_causal_lm(model, cache_dir=cache_dir)
    tokenizer = lm.tokenizer
    encoded, too_long = [], 0
    for row in rows:
        ids, n_prompt = encode_row(tokenizer, row["prompt"], row["completion"])
        if len(ids) > lora.max_length:
            too_long += 1
            continue
        encoded.append((ids, n_prompt))
    if not encoded:
        raise DataError(f"every one of the {len(rows)} rows is longer than max_length={lora.max_length} tokens")
    names = {name.rsplit(".", 1)[-1] for name, _ in lm.model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise DataError(f"{lm.path}: none of the projections {LORA_TARGETS} found to put LoRA adapters on")
    peft_model = get_peft_model(lm.model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=targets, task_type="CAUSAL_LM"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batches_for_epoch(epoch: int) -> list[list[tuple[list[int], int]]]:
        order = list(range(len(encoded)))
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        return [[encoded[i] for i in order[s: s + lora.batch_size]] for s in range(0, len(order), lora.batch_size)]

    def loss_fn(batch: list[tuple[list[int], int]]) -> torch.Tensor:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (ids, n_prompt) in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            labels[r, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
        return peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    result = train(peft_model, batches_for_epoch, loss_fn, config)
    base = Path(model).expanduser()
    # the adapter names the base as given (a bundled name stays a name; a folder becomes absolute)
    peft_model.peft_config["default"].base_model_name_or_path = str(base.resolve()) if base.exists() else str(model)
    with atomic_folder(output, overwrite=overwrite) as staging:
        peft_model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / TRAINING_FILE).write_text(json.dumps({
            "base_model": str(model), "lora": asdict(lora),
            "config": {**asdict(config), "precision": resolve_precision(config.precision)}, "targets": targets,
            "rows_used": len(encoded), "rows_too_long": too_long, "steps": result.steps, "seconds": result.seconds,
            "losses": result.losses}, indent=2), encoding="utf-8")
    return TuningResult(Path(output), len(encoded), too_long, result)
