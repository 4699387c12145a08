"""A :class:`~flagstone.models.generator.Generator` backed by a beacon-wrapped LM: prompts longer than the
base model's window are read through the compressed memory (MemoRAG's memory model)."""
from __future__ import annotations

import time
from collections.abc import Sequence

from flagstone.longctx.beacon import BeaconLM
from flagstone.models.generator import (
    Generation,
    Message,
    _check_settings,
    cut_at_stop,
    validate_messages,
)


class BeaconGenerator:
    def __init__(self, beacon: BeaconLM, tokenizer, *, name: str = "beacon", context_window: int = 1_000_000) -> None:
        self.beacon = beacon.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.context_window = context_window  # bounded by memory, not by positions

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        checked = validate_messages(messages)
        prefix = checked.pop()["content"] if checked[-1]["role"] == "assistant" else ""
        ids = list(self.tokenizer.apply_chat_template(checked, tokenize=True, add_generation_prompt=True,
                                                      return_dict=False))
        return ids + (self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256, stop: Sequence[str] = (),
                 temperature: float = 0.0) -> Generation:
        import torch

        stops = _check_settings(max_new_tokens, temperature, stop)
        if temperature > 0:
            raise ValueError("the beacon generator decodes greedily (temperature 0)")
        ids = self.prompt_ids(messages)
        start = time.perf_counter()
        eos = self.beacon.model.generation_config.eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        new: list[int] = []
        with torch.no_grad():
            logits, state = self.beacon.feed(ids)
            hit = None
            for _ in range(max_new_tokens):
                token = int(logits[0, -1].argmax())
                if token in stop_ids:
                    break
                new.append(token)
                text, hit = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stops)
                if hit is not None:
                    break
                logits, state = self.beacon.feed([token], state)
        text, hit = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), stops)
        finish = "length" if len(new) == max_new_tokens and hit is None else "stop"
        return Generation(text, hit, finish, len(ids), len(new), time.perf_counter() - start)
