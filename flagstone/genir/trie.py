"""A prefix trie over docid token sequences: which tokens may follow a prefix, and which document a complete
sequence names. Constrained decoding only ever extends a prefix with tokens the trie allows."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DocidTrie:
    """Built from one token sequence per document (document ``i`` is ``sequences[i]``).

    The sequences must be distinct, non-empty and prefix-free (no docid is the start of another), so a beam that
    reaches a complete docid has nowhere else to go.
    """

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        children: dict[tuple[int, ...], set[int]] = {}
        self._documents: dict[tuple[int, ...], int] = {}
        for doc, seq in enumerate(sequences):
            seq = tuple(int(t) for t in seq)
            if not seq:
                raise ValueError(f"document #{doc} has an empty docid")
            if seq in self._documents:
                raise ValueError(f"documents #{self._documents[seq]} and #{doc} share the docid {seq}")
            self._documents[seq] = doc
            for n in range(len(seq)):
                children.setdefault(seq[:n], set()).add(seq[n])
        clash = next((s for s in self._documents if s in children), None)
        if clash is not None:
            raise ValueError(f"docid {clash} of document #{self._documents[clash]} is a prefix of another docid")
        self._children = {prefix: np.array(sorted(tokens), dtype=np.int64) for prefix, tokens in children.items()}
        self.max_length = max((len(s) for s in self._documents), default=0)

    def __len__(self) -> int:
        return len(self._documents)

    def allowed(self, prefix: Sequence[int]) -> np.ndarray:
        """Tokens that extend ``prefix`` towards some docid (empty for a complete docid or a dead end)."""
        return self._children.get(tuple(prefix), np.zeros(0, dtype=np.int64))

    def document(self, sequence: Sequence[int]) -> int | None:
        """The document whose docid is exactly ``sequence``, or None when it names none."""
        return self._documents.get(tuple(sequence))
