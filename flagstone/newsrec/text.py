"""Word vocabulary and token tables for news titles (no torch: numpy arrays the model gathers from)."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from flagstone.errors import DataError
from flagstone.newsrec.mind import News

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (MIND titles are English)."""
    return _WORD.findall(text.lower())


@dataclass
class Vocabulary:
    """Word -> id; 0 is padding and 1 stands for words not seen when the vocabulary was built."""

    words: list[str]  # id -> word, starting with the two reserved entries

    @classmethod
    def build(cls, texts: Iterable[str], *, min_count: int = 1, max_size: int = 50_000) -> Vocabulary:
        counts = Counter(w for text in texts for w in words(text))
        kept = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count]
        if not kept:
            raise DataError("no words to build a vocabulary from (are the titles empty?)")
        return cls(["<pad>", "<unk>"] + kept[: max_size - 2])

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, length: int) -> list[int]:
        ids = [self._index.get(w, UNK) for w in words(text)][:length]
        return ids + [PAD] * (length - len(ids))


class TokenTable:
    """Every news item's title as a row of token ids; row 0 is an all-padding item (for padded histories)."""

    def __init__(self, news: dict[str, News], vocab: Vocabulary, length: int) -> None:
        self.row = {news_id: i + 1 for i, news_id in enumerate(news)}
        table = np.zeros((len(news) + 1, length), dtype=np.int64)
        for news_id, i in self.row.items():
            table[i] = vocab.encode(news[news_id].title, length)
            if not table[i].any():  # a title of punctuation only: keep one unknown token so it is encodable
                table[i, 0] = UNK
        self.tokens = table

    def rows(self, news_ids: Iterable[str]) -> list[int]:
        return [self.row[n] for n in news_ids]
