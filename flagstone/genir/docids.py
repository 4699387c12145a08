"""Document identifiers for generative retrieval.

``atomic``: document ``i`` is the single new token ``<d{i}>`` (DSI's atomic ids; the decoder's last layer is then
a classifier over the corpus). ``semantic``: documents are clustered by hierarchical k-means over their
embeddings (DSI's semantic ids, NCI's position-aware tokens): a cluster larger than ``leaf_size`` is split into
``branching`` sub-clusters, recursively; a leaf numbers its documents. A docid is the path of digits, and digit
``d`` at depth ``l`` is the token ``<s{l}-{d}>``, so similar documents share a prefix and the same digit means
different things at different depths.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DOCID_KINDS = ("atomic", "semantic")


@dataclass(frozen=True)
class Docids:
    """One code (a tuple of digits) per document; ``tokens()`` is the docid vocabulary, ``token_index`` maps a
    document's code to positions in it."""

    kind: str
    doc_ids: tuple[str, ...]
    codes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if self.kind not in DOCID_KINDS:
            raise ValueError(f"docid kind must be one of {DOCID_KINDS}, got {self.kind!r}")
        if len(self.doc_ids) != len(self.codes):
            raise ValueError(f"{len(self.doc_ids)} documents for {len(self.codes)} codes")
        if len(set(self.doc_ids)) != len(self.doc_ids):
            raise ValueError("document ids must be unique")

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def width(self) -> int:
        """Digits per depth (semantic) or documents (atomic): the size of one depth's token block."""
        return 1 + max((d for code in self.codes for d in code), default=0)

    @property
    def depth(self) -> int:
        return max((len(c) for c in self.codes), default=0)

    def tokens(self) -> list[str]:
        """The new vocabulary entries, in the order their ids are assigned."""
        if self.kind == "atomic":
            return [f"<d{i}>" for i in range(len(self))]
        return [f"<s{level}-{digit}>" for level in range(self.depth) for digit in range(self.width)]

    def token_sequence(self, doc: int) -> tuple[int, ...]:
        """Document ``doc``'s docid as offsets into :meth:`tokens`."""
        if self.kind == "atomic":
            return (doc,)
        return tuple(level * self.width + digit for level, digit in enumerate(self.codes[doc]))


def atomic_docids(doc_ids: Sequence[str]) -> Docids:
    """One token per document, numbered in corpus order."""
    return Docids("atomic", tuple(map(str, doc_ids)), tuple((i,) for i in range(len(doc_ids))))


def semantic_docids(doc_ids: Sequence[str], vectors: np.ndarray, *, branching: int = 10, leaf_size: int = 100,
                    seed: int = 0) -> Docids:
    """Hierarchical k-means codes of ``vectors`` (one unit-length row per document, e.g. MiniLM embeddings).

    Clusters are learnt with the spherical k-means the IVF index uses. Where k-means cannot separate a cluster
    (all its vectors identical), it is cut into ``branching`` runs in corpus order, so the recursion always ends.
    """
    if branching < 2:
        raise ValueError("branching must be at least 2")
    if leaf_size < 1:
        raise ValueError("leaf_size must be at least 1")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(doc_ids):
        raise ValueError(f"need one vector per document: {len(doc_ids)} documents, vectors of shape {vectors.shape}")
    codes: list[tuple[int, ...]] = [()] * len(doc_ids)
    pending = [(np.arange(len(doc_ids)), ())]
    while pending:
        rows, prefix = pending.pop()
        if len(rows) <= leaf_size:
            for position, row in enumerate(rows):
                codes[row] = prefix + (position,)
            continue
        groups = _split(vectors[rows], branching, seed + len(prefix))
        for digit, members in enumerate(groups):
            pending.append((rows[members], prefix + (digit,)))
    return Docids("semantic", tuple(map(str, doc_ids)), tuple(codes))


def _split(vectors: np.ndarray, branching: int, seed: int) -> list[np.ndarray]:
    """Row numbers of each non-empty k-means cluster (ordered by cluster); a split into ordered runs when
    k-means puts everything in one cluster."""
    from flagstone.index.ivf import train_centroids

    k = min(branching, len(vectors))
    centroids = train_centroids(vectors, k, seed=seed, min_points_per_centroid=1)  # small clusters are expected
    labels = np.argmax(vectors @ centroids.T, axis=1)
    groups = [np.flatnonzero(labels == c) for c in range(k)]
    groups = [g for g in groups if len(g)]
    if len(groups) < 2:
        groups = [g for g in np.array_split(np.arange(len(vectors)), k) if len(g)]
    return groups
