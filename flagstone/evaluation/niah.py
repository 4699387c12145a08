"""Needle in a haystack: hide one fact at a chosen depth of a long filler text and ask for it back."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flagstone.errors import DataError


@dataclass(frozen=True)
class Needle:
    fact: str
    question: str
    key: str  # an answer is correct when it contains this (case-insensitive)
    lead: str = ""  # the answer's first words, for passkey-style prompts where the model continues them

    def is_found(self, answer: str) -> bool:
        return self.key.lower() in answer.lower()


DEFAULT_NEEDLE = Needle(
    "The secret passphrase for the old lighthouse archive is amber falcon 4821.",
    "What is the secret passphrase for the old lighthouse archive?",
    "4821",
    "The secret passphrase for the old lighthouse archive is",
)


def load_essays(folder: str | os.PathLike) -> list[str]:
    """The ``*.txt`` files of a folder in name order (licence files skipped): the haystack's filler."""
    paths = sorted(p for p in Path(folder).glob("*.txt") if not p.name.lower().startswith("license"))
    if not paths:
        raise DataError(f"no .txt essays in {folder}")
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def build_haystack(essays: Sequence[str], length_tokens: int, depth: float, count_tokens: Callable[[str], int],
                   needle: Needle = DEFAULT_NEEDLE) -> str:
    """Filler text of about ``length_tokens`` tokens with the needle placed at ``depth`` (0 = start, 1 = end),
    on a sentence boundary."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if length_tokens < 2 * count_tokens(needle.fact):
        raise ValueError(f"length_tokens={length_tokens} is too short for the needle")
    filler, i = "", 0
    while count_tokens(filler) < length_tokens:  # essays repeat if the length asks for more than they hold
        filler += essays[i % len(essays)].strip() + "\n\n"
        i += 1
    target = length_tokens - count_tokens(needle.fact) - 1
    lo, hi = 0, len(filler)  # the longest prefix that fits the target, by bisection on characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(filler[:mid]) <= target:
            lo = mid
        else:
            hi = mid - 1
    filler = filler[:lo]
    at = int(len(filler) * depth)
    boundary = filler.rfind(". ", 0, at)
    at = 0 if depth == 0 or boundary == -1 else boundary + 2
    return filler[:at] + needle.fact + " " + filler[at:]
