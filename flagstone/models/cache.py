"""On-disk embedding cache keyed by model, settings and text, safe to interrupt, and
:class:`CachedEmbedder`, the wrapper that lets any embedder use it.

Layout: ``<root>/<settings key>/shard-<n>.npz``, each shard holding the SHA-256 of its texts and their
embeddings. Shards are written to a temporary name and renamed into place, so a kill at any moment
leaves only whole shards; unreadable shards are reported and ignored. Shards never change once renamed, so
each is read once per cache object and kept in memory; later calls only look for new shard files.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from flagstone._io import atomic_write
from flagstone.errors import CacheError
from flagstone.models._paths import default_cache_dir  # re-exported: callers import it from here
from flagstone.models.embedder import Embedder, EmbedderSettings
from flagstone.models.embeddings import Embeddings

if TYPE_CHECKING:
    import torch

_SHARD_TEXTS = 512  # texts encoded and written per shard: what an interruption can lose at most
_STALE_SECONDS = 3600  # age after which a temporary file is known to belong to a dead writer


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Encodes only texts it has not seen with the same model and settings."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "embeddings"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create cache directory {self.root}: {exc.strerror}") from None
        self._known: dict[Path, dict[bytes, tuple[Embeddings, int]]] = {}
        self._read_shards: dict[Path, set[str]] = {}
        self._lock = threading.Lock()  # the service encodes from several threads

    def encode(
        self,
        embedder: Embedder,
        texts: Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        is_query: bool = False,
        show_progress: bool | None = None,
    ) -> Embeddings:
        """Like :meth:`Embedder.encode`, reading what is cached and writing what is new.

        A :class:`CachedEmbedder` passed here is unwrapped: texts are cached here only, not twice.
        """
        while isinstance(embedder, CachedEmbedder):
            embedder = embedder.embedder
        outputs = [n for n, on in (("dense", dense), ("sparse", sparse), ("colbert", colbert)) if on]
        folder = self.root / embedder.cache_key(outputs, is_query)
        known = self._load(folder)
        keys = [text_key(t) for t in texts]
        missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in known}.values())
        progress = embedder.show_progress if show_progress is None else show_progress
        bar = tqdm(total=len(missing), desc="Encoding", unit="text", disable=not progress or len(missing) < 2)
        for start in range(0, len(missing), _SHARD_TEXTS):
            chunk = missing[start : start + _SHARD_TEXTS]
            emb = embedder.encode([texts[i] for i in chunk], dense=dense, sparse=sparse, colbert=colbert,
                                  is_query=is_query, show_progress=False)
            chunk_keys = [keys[i] for i in chunk]
            shard = self._write_shard(folder, chunk_keys, emb)
            with self._lock:
                self._read_shards.setdefault(folder, set()).add(shard.name)
                for row, k in enumerate(chunk_keys):
                    known[k] = (emb, row)
            bar.update(len(chunk))
        bar.close()
        if not keys:
            return Embeddings()
        # gather rows shard by shard to keep the copy vectorised
        by_source: dict[int, tuple[Embeddings, list[int], list[int]]] = {}
        for pos, k in enumerate(keys):
            emb, row = known[k]
            entry = by_source.setdefault(id(emb), (emb, [], []))
            entry[1].append(row)
            entry[2].append(pos)
        pieces = [emb.take(rows) for emb, rows, _ in by_source.values()]
        positions = np.concatenate([np.asarray(p, dtype=np.int64) for _, _, p in by_source.values()])
        inverse = np.empty_like(positions)
        inverse[positions] = np.arange(len(positions))
        return Embeddings.concat(pieces).take(inverse)

    def _load(self, folder: Path) -> dict[bytes, tuple[Embeddings, int]]:
        """Every cached key in ``folder`` with its rows, reading only shards this object has not read yet."""
        with self._lock:
            known = self._known.setdefault(folder, {})
            read = self._read_shards.setdefault(folder, set())
            if not folder.is_dir():
                return known
            for stale in folder.glob(".shard-*.flagstone-tmp-*"):  # left by a killed writer; a live writer renames within seconds
                try:
                    if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                        stale.unlink()
                except FileNotFoundError:
                    pass
            for shard in sorted(folder.glob("shard-*.npz")):
                if shard.name in read:
                    continue
                read.add(shard.name)  # an unreadable shard is reported once, not on every call
                try:
                    with np.load(shard) as data:
                        arrays = {name: data[name] for name in data.files}
                    emb = Embeddings.from_arrays(arrays)
                    shard_keys = arrays["keys"]
                    if len(shard_keys) != len(emb):
                        raise ValueError("key count does not match rows")
                except Exception as exc:  # any unreadable shard is skipped, never trusted
                    warnings.warn(f"ignoring unreadable cache shard {shard.name}: {exc}", stacklevel=2)
                    continue
                for row, k in enumerate(shard_keys):
                    known[k.tobytes()] = (emb, row)
            return known

    def _write_shard(self, folder: Path, keys: list[bytes], emb: Embeddings) -> Path:
        arrays = emb.to_arrays()
        arrays["keys"] = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        name = folder / f"shard-{uuid.uuid4().hex}.npz"
        try:
            with atomic_write(name, "wb") as handle:
                np.savez(handle, **arrays)
        except OSError as exc:
            raise CacheError(f"cannot write embedding cache in {folder}: {exc.strerror}") from None
        return name

    def clear(self) -> None:
        """Delete every cached embedding under this root."""
        import shutil

        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            self._known.clear()
            self._read_shards.clear()


class CachedEmbedder:
    """An embedder that reads documents' embeddings from an :class:`EmbeddingCache` and encodes (and caches)
    only the ones it has not seen; queries are encoded every time, as :class:`~flagstone.retrieval.Retriever`
    does with its ``cache``: they are rarely repeated, and one-off texts would only fill the cache.

    It offers the encoding surface of :class:`~flagstone.models.embedder.Embedder` (``encode``,
    ``encode_queries``, ``encode_documents``, ``tokenize``, ``available_outputs``, ``name``, ``settings``,
    ...), so it goes wherever an embedder is used for encoding: a retriever, a RAG context, a service.
    ``embedder`` may be anything with that surface (an Embedder, the service's batched embedder). Do not wrap
    an embedder that is being trained: the cache key comes from the weight files, not from weights in memory.
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache) -> None:
        if not isinstance(cache, EmbeddingCache):
            raise TypeError(f"cache must be an EmbeddingCache, got {type(cache).__name__}")
        self.embedder = embedder
        self.cache = cache

    # -- what callers read off an embedder ------------------------------------------------------
    @property
    def name(self) -> str:
        return self.embedder.name

    @property
    def path(self) -> Path:
        return self.embedder.path

    @property
    def settings(self) -> EmbedderSettings:
        return self.embedder.settings

    @property
    def fingerprint(self) -> str:
        return self.embedder.fingerprint

    @property
    def tokenizer(self):  # a Hugging Face tokenizer (transformers is imported lazily)
        return self.embedder.tokenizer

    @property
    def device(self) -> str:
        return self.embedder.device

    @property
    def show_progress(self) -> bool:
        return self.embedder.show_progress

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def vocab_size(self) -> int:
        return self.embedder.vocab_size

    @property
    def has_dense(self) -> bool:
        return self.embedder.has_dense

    @property
    def has_sparse(self) -> bool:
        return self.embedder.has_sparse

    @property
    def has_colbert(self) -> bool:
        return self.embedder.has_colbert

    @property
    def available_outputs(self) -> tuple[str, ...]:
        return self.embedder.available_outputs

    def cache_key(self, outputs: Sequence[str], is_query: bool) -> str:
        return self.embedder.cache_key(outputs, is_query)

    def tokenize(self, texts: Sequence[str], *, is_query: bool = False, max_length: int | None = None,
                 truncate: bool = True) -> list[list[int]]:
        return self.embedder.tokenize(texts, is_query=is_query, max_length=max_length, truncate=truncate)

    def pad(self, token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embedder.pad(token_ids)

    def count_truncated(self, texts: Sequence[str]) -> int:
        return self.embedder.count_truncated(texts)

    def lexical_tokens(self, weights: dict[int, float]) -> dict[str, float]:
        return self.embedder.lexical_tokens(weights)

    def __repr__(self) -> str:
        return f"CachedEmbedder({self.embedder!r}, cache={str(self.cache.root)!r})"

    # -- encoding -------------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        is_query: bool = False,
        truncate: bool = True,
        show_progress: bool | None = None,
    ) -> Embeddings:
        """:meth:`Embedder.encode`, with documents (``is_query=False``) read from and written to the cache."""
        texts = self.embedder.check_request(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=is_query)
        if not truncate:
            # raise for a text over max_length even when its (truncated) vectors are cached; what is left to
            # encode then fits, so truncation does not matter below
            self.embedder.tokenize(texts, is_query=is_query, truncate=False)
        if is_query:
            return self.embedder.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=True,
                                        show_progress=show_progress)
        return self.cache.encode(self.embedder, texts, dense=dense, sparse=sparse, colbert=colbert,
                                 show_progress=show_progress)

    def encode_queries(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False,
                       colbert: bool = False, show_progress: bool | None = None) -> Embeddings:
        """Encode queries (not cached): the model's query instruction is prepended."""
        return self.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=True,
                           show_progress=show_progress)

    def encode_documents(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False,
                         colbert: bool = False, show_progress: bool | None = None) -> Embeddings:
        """Encode documents through the cache."""
        return self.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=False,
                           show_progress=show_progress)

    encode_corpus = encode_documents  # FlagEmbedding's name, as on Embedder
