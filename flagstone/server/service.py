"""What every router of the service shares: one ``Service`` on ``app.state.service``, reached with
``Depends(get_service)``, plus the error type and body that all endpoints answer with."""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

from flagstone.server.problems import HTTPProblem  # noqa: F401 (the routes import it from here)

if TYPE_CHECKING:
    from flagstone.server.settings import ServerSettings
    from flagstone.server.batching import BatchingEncoder
    from flagstone.server.collections import CollectionManager
    from flagstone.server.metrics import Metrics
    from flagstone.server.pool import ModelPool

_log = logging.getLogger(__name__)


# an absolute (or home-relative) POSIX or Windows path of two or more parts, not inside a word or a URL
_PATH = re.compile(r"""(?<![\w.~:/\\-])(?:~|[A-Za-z]:)?(?:[/\\][^\s'"`/\\:,;()\[\]{}<>|]+){2,}[/\\]?""")


def scrub_paths(message: str) -> str:
    """``message`` with every server path cut to its last part (``.../model``): clients learn which file, not
    where the server keeps its files."""
    def last_part(match: re.Match) -> str:
        parts = [p for p in re.split(r"[/\\]", match.group()) if p]
        return f".../{parts[-1]}"

    return _PATH.sub(last_part, message)


def problem(status: int, kind: str, message: str) -> JSONResponse:
    """The error body every endpoint answers with. Server paths are scrubbed from what the client sees; the
    full message goes to the log, where the operator needs it."""
    # a message may quote what a client sent, lone surrogates included: escape those, or rendering the error
    # itself would fail with a 500
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    shown = scrub_paths(message)
    if shown != message:
        _log.warning("answered %d %s: %s", status, kind, message)
    return JSONResponse({"error": {"type": kind, "message": shown}}, status_code=status)


@dataclass
class Service:
    """The state of one app: settings, the embedder and its batcher, the collections, the metrics, and the
    reranker and generator, loaded on first use."""

    settings: ServerSettings
    embedder: Any
    batcher: BatchingEncoder
    collections: CollectionManager
    metrics: Metrics
    model_pool: ModelPool  # where rerank and ask run (see ``pool``)
    heavy: dict[str, Any] = field(default_factory=dict)
    heavy_lock: threading.Lock = field(default_factory=threading.Lock)  # loading the reranker or generator
    # one generation at a time (the model is shared); apart from heavy_lock so reranks need not wait for it
    generate_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: ServerSettings, embedder=None) -> Service:
        """Load what the settings name (``embedder`` may be passed in: tests share one)."""
        from pathlib import Path

        from flagstone.models.cache import EmbeddingCache
        from flagstone.server.batching import BatchedEmbedder, BatchingEncoder
        from flagstone.server.collections import CollectionManager
        from flagstone.server.metrics import Metrics
        from flagstone.server.pool import ModelPool

        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        if embedder is None:
            from flagstone.models.embedder import Embedder
            from flagstone.models.presets import DEFAULT_MODEL

            embedder = Embedder(settings.model or DEFAULT_MODEL, backend=settings.backend,
                                precision=settings.precision, show_progress=False)
        batcher = BatchingEncoder(embedder, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
        batched = BatchedEmbedder(embedder, batcher)
        data_dir = Path(settings.data_dir)
        cache = EmbeddingCache(data_dir / "embeddings")
        collections = CollectionManager(data_dir / "collections", batched, cache)
        if settings.ray is not None:
            try:
                _serve_sharded(settings, collections, batched, embedder, cache, data_dir)
            except BaseException:  # the service never starts: stop the batcher thread and any shard actors
                collections.close()
                batcher.close()
                raise
        metrics = Metrics(lambda: batcher.queue_depth, lambda: {n: collections.get(n).count()
                                                                 for n in collections.names()})
        pool = ModelPool(settings.model_workers, settings.model_queue, settings.retry_after_s)
        return cls(settings, embedder, batcher, collections, metrics, pool)

    def close(self) -> None:
        self.model_pool.close()
        self.batcher.close()
        self.collections.close()

    # -- checks -------------------------------------------------------------------------------------
    def key_is_valid(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header value is ``Bearer <one of the configured keys>``."""
        scheme, _, token = authorization.partition(" ")
        # constant time: compare digests (equal length) with every key, without stopping at a match, so the
        # answer's timing tells nothing about how much of a key was right or which key matched
        given = hashlib.sha256(_header_bytes(token.strip())).digest()
        found = False
        for key in self.settings.api_keys:
            found |= hmac.compare_digest(given, hashlib.sha256(key.encode("utf-8")).digest())
        return scheme.lower() == "bearer" and found

    def authorise(self, request: Request) -> None:
        if self.settings.api_keys and not self.key_is_valid(request.headers.get("authorization", "")):
            raise HTTPProblem(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")

    def check_texts(self, texts: list[str], what: str = "texts", *, allow_empty: bool = False) -> None:
        """Count and length limits; ``allow_empty`` for documents (an empty one is stored and indexed as the
        empty text, as in BEIR collections), never for queries."""
        settings = self.settings
        if not texts:
            raise HTTPProblem(400, "invalid_request", f"{what} is empty")
        if len(texts) > settings.max_texts:
            raise HTTPProblem(413, "too_large", f"{len(texts)} {what}; at most {settings.max_texts} per request")
        for i, text in enumerate(texts):
            if not allow_empty and not text.strip():
                raise HTTPProblem(400, "invalid_request", f"{what}[{i}] is empty")
            if len(text) > settings.max_chars:
                raise HTTPProblem(413, "too_large", f"{what}[{i}] has {len(text)} characters; at most "
                                                    f"{settings.max_chars}")
            if "\x00" in text:
                raise HTTPProblem(400, "invalid_request", f"{what}[{i}] contains a NUL character")

    def check_k(self, k: int) -> None:
        if k > self.settings.max_k:
            raise HTTPProblem(400, "invalid_request", f"k={k} is over the limit of {self.settings.max_k}")

    # -- models loaded on first use -----------------------------------------------------------------
    def load_reranker(self):
        if self.settings.reranker is None:
            raise HTTPProblem(400, "not_configured", "no reranker configured: start the server with --reranker")
        with self.heavy_lock:
            if "reranker" not in self.heavy:
                from flagstone.models.reranker import CrossEncoderReranker

                # on torch: it loads inside the first /rerank request, which must not wait for an export
                self.heavy["reranker"] = CrossEncoderReranker(self.settings.reranker)
            return self.heavy["reranker"]

    def load_generator(self):
        with self.heavy_lock:
            if "generator" not in self.heavy:
                from flagstone.models.generator import load_generator as load

                self.heavy["generator"] = load(self.settings.generator, base_url=self.settings.generator_base_url)
            return self.heavy["generator"]


def _serve_sharded(settings: ServerSettings, collections, batched, embedder, cache, data_dir) -> None:
    """``serve --ray``: join (or start) the Ray cluster, mount each sharded folder named in ``settings.sharded``,
    and with ``settings.shards`` rebuild every non-empty stored collection as that many shards and serve it
    from shard actors (read-only from then on; its documents stay in the store)."""
    from flagstone.distributed.cluster import connect
    from flagstone.errors import FlagstoneError
    from flagstone.server.sharded import open_sharded, shard_collection

    connect(settings.ray or None)
    options = {"replicas": settings.replicas, "deadline_s": settings.shard_deadline_s}
    for name, folder in settings.sharded.items():
        if name in collections.names():
            raise FlagstoneError(f"--sharded {name}: a stored collection of that name exists; pick another name")
        collections.replace(name, open_sharded(name, folder, batched, **options))
    if settings.shards:
        for name in collections.names():
            if name in settings.sharded:
                continue
            sharded = shard_collection(collections.get(name), data_dir / "sharded" / name, batched, embedder, cache,
                                       shards=settings.shards, **options)
            if sharded is not None:
                collections.replace(name, sharded)


def _header_bytes(value: str) -> bytes:
    """The bytes a client sent for a header value: ASGI servers hand headers over as bytes and Starlette decodes
    them as latin-1, so encoding back gives a non-ASCII key sent as UTF-8 its UTF-8 bytes again."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from a header (a caller passing text): its UTF-8 bytes are what it means
        return value.encode("utf-8")


def get_service(request: Request) -> Service:
    """The dependency through which routers reach the app's ``Service``."""
    return request.app.state.service


def authorised(request: Request) -> None:
    """Route dependency: a 401 unless the request carries one of the configured API keys (if any are)."""
    get_service(request).authorise(request)
