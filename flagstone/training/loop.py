"""One training loop for every model Flagstone trains: AdamW with linear warm-up and decay, gradient
accumulation, deterministic seeds, a progress bar with the loss, and resumable checkpoints.

Callers supply the batches (a list, so an epoch can be replayed exactly after a resume) and a function
that turns one batch into a loss; the loop owns the optimiser, the schedule and the checkpoints.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flagstone.errors import DataError
from flagstone.training.settings import TrainingConfig

if TYPE_CHECKING:
    import torch

_STATE_FILE = "trainer_state.pt"
_META_FILE = "trainer_state.json"


@dataclass
class TrainingResult:
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per optimiser step
    seconds: float = 0.0
    resumed_from: int = 0
    precision: str = ""  # what the steps computed in: "bfloat16" (autocast) or "float32" ("auto" resolved)


def soft_cross_entropy(student: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the rows of ``student`` (logits) against ``teacher_probs`` (a distribution per row):
    the distillation loss of both trainers (equal to the KL divergence up to the teacher's entropy)."""
    import torch

    return -(teacher_probs * torch.log_softmax(student, dim=-1)).sum(-1).mean()


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: torch.nn.Module,
    batches_for_epoch: Callable[[int], Sequence[Any]],
    loss_fn: Callable[[Any], torch.Tensor],
    config: TrainingConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    lr_scales: dict[int, float] | None = None,
) -> TrainingResult:
    """Train ``model``'s parameters that require gradients.

    ``batches_for_epoch(epoch)`` returns that epoch's batches (deterministic for the seed, so a resumed
    run sees the same data); ``loss_fn(batch)`` returns a scalar loss. With ``checkpoint_dir`` the model,
    optimiser, schedule and position are saved every ``checkpoint_every`` steps and a later call with
    the same arguments resumes from the last one. ``on_step(step, loss)`` runs after each optimiser step
    (evaluation hooks, logging). ``lr_scales`` maps ``id(parameter)`` to a learning-rate multiplier (new
    heads on a pretrained encoder learn faster than the encoder).
    """
    import torch
    from tqdm.auto import tqdm

    from flagstone.models._hf import resolve_precision

    seed_everything(config.seed)
    precision = resolve_precision(config.precision)
    autocast = precision == "bfloat16"
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameters require gradients: nothing to train")
    groups: dict[tuple[float, bool], list] = {}
    for p in params:  # biases and norms are not decayed; each scale gets its own group
        scale = (lr_scales or {}).get(id(p), 1.0)
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": ps, "lr": config.learning_rate * scale, "weight_decay": config.weight_decay if decay else 0.0}
         for (scale, decay), ps in groups.items()], lr=config.learning_rate)
    per_epoch = len(batches_for_epoch(0)) // config.gradient_accumulation
    if per_epoch == 0:
        raise DataError("not enough training batches for one optimiser step")
    total = per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, per_epoch * config.epochs)
    warmup = int(total * config.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    result = TrainingResult(steps=0, precision=precision)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / _STATE_FILE).is_file():
        state = torch.load(ckpt / _STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.steps = result.resumed_from = int(state["step"])
        result.losses = list(state["losses"])
        torch.set_rng_state(state["torch_rng"])

    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, initial=result.steps, desc="Training", unit="step", disable=not config.show_progress)
    try:
        for epoch in range(config.epochs):
            if result.steps >= total:
                break
            batches = batches_for_epoch(epoch)
            first = (result.steps - epoch * per_epoch) * config.gradient_accumulation
            if first >= per_epoch * config.gradient_accumulation:
                continue  # this epoch finished before the resume point
            step_loss, micro = 0.0, 0
            for batch in batches[max(0, first): per_epoch * config.gradient_accumulation]:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_fn(batch) / config.gradient_accumulation
                loss.backward()
                step_loss += float(loss.detach())
                micro += 1
                if micro < config.gradient_accumulation:
                    continue
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                result.losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                if on_step is not None:
                    on_step(result.steps, step_loss)
                    model.train()
                step_loss, micro = 0.0, 0
                if ckpt is not None and config.checkpoint_every and result.steps % config.checkpoint_every == 0:
                    _save_state(ckpt, model, optimizer, scheduler, result, config)
                if result.steps >= total:
                    break
    finally:
        bar.close()
        model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _save_state(folder: Path, model, optimizer, scheduler, result: TrainingResult, config: TrainingConfig) -> None:
    """Write the resumable state to a temporary folder and swap it in, so a kill never leaves half a file."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{_STATE_FILE}.tmp"
    # frozen parameters never change, so only what trains is saved (a frozen 100M-parameter base stays out)
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": result.steps, "losses": result.losses, "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, folder / _STATE_FILE)
    meta = folder / f".{_META_FILE}.tmp"
    meta.write_text(json.dumps({"step": result.steps, "config": asdict(config), "precision": result.precision},
                               indent=2))
    os.replace(meta, folder / _META_FILE)


def clear_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Remove a finished run's resumable state (the saved model itself is kept)."""
    for name in (_STATE_FILE, _META_FILE):
        path = Path(folder) / name
        if path.is_file():
            path.unlink()
    leftovers = Path(folder) / f".{_STATE_FILE}.tmp"
    if leftovers.exists():
        shutil.rmtree(leftovers, ignore_errors=True) if leftovers.is_dir() else leftovers.unlink()
