"""Dynamic batching: concurrent encode requests share forward passes.

One worker thread owns the model. A request waits in a queue; the worker takes it, waits up to
``max_wait_ms`` for more requests with the same outputs, encodes them together (up to ``max_batch`` texts)
and hands each caller its rows. Under load the model sees full batches; alone, a request waits at most
``max_wait_ms`` extra.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from flagstone.models.embeddings import Embeddings

_log = logging.getLogger(__name__)


@dataclass
class _Request:
    texts: list[str]
    key: tuple[bool, bool, bool, bool]  # is_query, dense, sparse, colbert
    future: Future = field(default_factory=Future)


class BatchingEncoder:
    def __init__(self, embedder, *, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending: list[_Request] = []
        self.batches = 0
        self.texts = 0
        self._worker = threading.Thread(target=self._run, name="flagstone-encoder", daemon=True)
        self._worker.start()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._pending)

    def encode(self, texts: Sequence[str], *, is_query: bool = False, dense: bool = True, sparse: bool = False,
               colbert: bool = False, timeout: float | None = None) -> Embeddings:
        """Blocking: the embeddings of ``texts``, encoded together with whatever else is waiting."""
        if not texts:
            return Embeddings()
        request = _Request(list(texts), (is_query, dense, sparse, colbert))
        self._queue.put(request)
        return request.future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _next(self, block: bool, timeout: float | None = None) -> _Request | None:
        if self._pending:
            return self._pending.pop(0)
        try:
            return self._queue.get(block=block, timeout=timeout)
        except queue.Empty:
            return None

    def _run(self) -> None:
        while True:
            first = self._next(block=True)
            if first is None:
                return
            batch, size = [first], len(first.texts)
            deadline = time.perf_counter() + self.max_wait
            skipped: list[_Request] = []
            while size < self.max_batch:
                left = deadline - time.perf_counter()
                request = self._next(block=left > 0, timeout=max(left, 0))
                if request is None:
                    break
                if request.key != first.key or size + len(request.texts) > self.max_batch and size > 0:
                    skipped.append(request)  # other outputs, or would overflow: next batch
                    if request.key == first.key:
                        break
                    continue
                batch.append(request)
                size += len(request.texts)
            self._pending = skipped + self._pending
            self._encode(batch)

    def _encode(self, batch: list[_Request]) -> None:
        is_query, dense, sparse, colbert = batch[0].key
        texts = [t for r in batch for t in r.texts]
        try:
            emb = self.embedder.encode(texts, is_query=is_query, dense=dense, sparse=sparse, colbert=colbert,
                                       show_progress=False)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # one request's texts may have failed the whole batch: encode each request alone, so only the
            # request at fault gets the error and the others their embeddings
            _log.warning("an encoder batch of %d requests failed (%s: %s); encoding them one by one", len(batch),
                         type(exc).__name__, exc)
            for r in batch:
                self._encode([r])
            return
        except BaseException as exc:  # noqa: BLE001 -- not a bad input: no retrying, every caller gets the error
            for r in batch:
                r.future.set_exception(exc)
            return
        self.batches += 1
        self.texts += len(texts)
        start = 0
        for r in batch:
            r.future.set_result(emb.take(np.arange(start, start + len(r.texts))))
            start += len(r.texts)


class BatchedEmbedder:
    """Looks like an :class:`~flagstone.models.embedder.Embedder` but encodes through a :class:`BatchingEncoder`,
    so retrievers and caches built on it share the service's batches."""

    def __init__(self, embedder, batcher: BatchingEncoder) -> None:
        self._embedder = embedder
        self._batcher = batcher

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)

    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False, colbert: bool = False,
               is_query: bool = False, show_progress: bool | None = None) -> Embeddings:
        from flagstone.models.embedder import validate_texts

        validate_texts(texts, allow_empty=not is_query)
        return self._batcher.encode(texts, is_query=is_query, dense=dense, sparse=sparse, colbert=colbert)
