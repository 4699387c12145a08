"""Training the beacon parameters: next-token loss on raw tokens across windows, base model frozen."""
from __future__ import annotations

import os
import random
from collections.abc import Sequence

from flagstone.longctx.beacon import BeaconLM
from flagstone.training.loop import TrainingConfig, TrainingResult, train


def token_segments(texts: Sequence[str], tokenizer, length: int, *, stride: int | None = None) -> list[list[int]]:
    """Cut the token stream of each text into segments of ``length`` tokens (the last partial one dropped)."""
    if length < 2:
        raise ValueError("length must be at least 2")
    stride = stride or length
    segments = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        segments += [ids[i:i + length] for i in range(0, len(ids) - length + 1, stride)]
    return segments


RATIO_SAMPLING = ("step", "window")


def train_beacon(beacon: BeaconLM, segments: Sequence[Sequence[int]], config: TrainingConfig, *,
                 checkpoint_dir: str | os.PathLike | None = None, ratio: int | None = None,
                 sample_ratio: str = "step", on_step=None) -> TrainingResult:
    """Train only the beacon parameters on token ``segments`` (one segment per micro-batch; each spans several
    windows so gradients flow through the memory). Unless ``ratio`` fixes it, the compression ratio is drawn
    from ``beacon.config.ratios`` once per segment (``sample_ratio="step"``, as in the paper: every window of
    a segment uses it) or for every window (``"window"``). Draws use torch's generator, which the training
    loop seeds and restores on resume. Resumable with ``checkpoint_dir``."""
    if sample_ratio not in RATIO_SAMPLING:
        raise ValueError(f"sample_ratio must be one of {RATIO_SAMPLING}, got {sample_ratio!r}")
    if not segments:
        raise ValueError("no training segments")
    window = beacon.config.window
    if max(len(s) for s in segments) <= window:
        raise ValueError(f"segments of at most {window} tokens never leave the first window: nothing to learn")
    order = list(segments)

    def batches_for_epoch(epoch: int) -> list[Sequence[int]]:
        shuffled = list(order)
        random.Random(config.seed + epoch).shuffle(shuffled)
        return shuffled

    def loss_fn(segment) -> object:
        import torch

        chosen = ratio
        if chosen is None and sample_ratio == "step":
            ratios = beacon.config.ratios
            chosen = ratios[int(torch.randint(len(ratios), (1,)))]
        return beacon.loss(segment, ratio=chosen)  # None: BeaconLM draws a ratio per window in training mode

    return train(beacon, batches_for_epoch, loss_fn, config, checkpoint_dir=checkpoint_dir, on_step=on_step)
