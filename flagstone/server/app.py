"""The HTTP service (needs the ``server`` extra): embeddings (OpenAI-compatible and native), collections, search, rerank, ask, metrics.

``create_app(ServerSettings(...))`` builds a FastAPI app; ``flagstone serve`` runs it with uvicorn.
Every request body is validated against the OpenAPI schema; user mistakes get a 4xx with
``{"error": {"type", "message"}}``; nothing a client sends reaches a 5xx by design.
"""
from __future__ import annotations

import base64
import os
from contextlib import asynccontextmanager
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from flagstone.errors import FlagstoneError, IdError, MissingHeadError
from flagstone.server.collections import CollectionExists, CollectionNotFound
from flagstone.server.store import Document

STATIC = Path(__file__).parent / "static"


@dataclass
class ServerSettings:
    data_dir: str = "flagstone-data"
    model: str | None = None  # embedding model (default: the bundled all-MiniLM-L6-v2)
    reranker: str | None = None  # cross-encoder for /rerank and search reranking
    generator: str = "smollm2-135m-instruct"  # loaded on the first /ask
    generator_base_url: str | None = None
    api_keys: frozenset[str] = field(default_factory=frozenset)
    max_texts: int = 256  # per request
    max_chars: int = 20_000  # per text
    max_body_bytes: int = 8 * 1024 * 1024
    max_k: int = 1000
    max_batch: int = 256  # larger batches sort by length over more texts: less padding (see serve_load)
    max_wait_ms: float = 5.0
    threads: int | None = None


def read_api_keys(path: str | None = None, env: str = "FLAGSTONE_API_KEYS") -> frozenset[str]:
    """Keys from a file (one per line, # comments) and/or a comma-separated environment variable."""
    keys: set[str] = set()
    if path:
        from flagstone._io import read_text

        keys |= {ln.strip() for ln in read_text(path, "API key file").splitlines()
                 if ln.strip() and not ln.strip().startswith("#")}
    keys |= {k.strip() for k in os.environ.get(env, "").split(",") if k.strip()}
    return frozenset(keys)


# -- request and response bodies ---------------------------------------------------------------------
class OpenAIEmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbedRequest(BaseModel):
    texts: list[str]
    dense: bool = True
    sparse: bool = False
    colbert: bool = False
    is_query: bool = False


class CreateCollection(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    index: Literal["flat", "hi2"] = "flat"
    description: str = Field(default="", max_length=1000)


class DocumentIn(BaseModel):
    id: str = Field(min_length=1, max_length=512)
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class AddDocuments(BaseModel):
    documents: list[DocumentIn]
    upsert: bool = True  # False: an id that exists already is an error


class DeleteDocuments(BaseModel):
    ids: list[str] = Field(min_length=1)
    missing_ok: bool = False


class SearchRequest(BaseModel):
    query: str
    mode: str = "hybrid"
    k: int = Field(default=10, ge=1)
    filter: dict[str, Any] | None = None
    rerank: bool = False
    rerank_depth: int = Field(default=50, ge=1)


class RerankRequest(BaseModel):
    query: str
    documents: list[str]
    top_n: int | None = Field(default=None, ge=1)


class AskRequest(BaseModel):
    question: str
    collection: str
    pipeline: Literal["rag", "memorag", "search_o1", "lc_boost", "full_context", "no_retrieval"] = "rag"
    k: int = Field(default=3, ge=1, le=20)
    max_new_tokens: int = Field(default=64, ge=1, le=512)


class HTTPProblem(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def create_app(settings: ServerSettings | None = None, *, embedder=None):
    """The FastAPI app. ``embedder`` may be passed in (tests share one); otherwise it is loaded here."""
    from flagstone.models.cache import EmbeddingCache
    from flagstone.server.batching import BatchedEmbedder, BatchingEncoder
    from flagstone.server.collections import CollectionManager
    from flagstone.server.metrics import Metrics

    settings = settings or ServerSettings()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    if embedder is None:
        from flagstone.models.embedder import Embedder
        from flagstone.models.presets import DEFAULT_MODEL

        embedder = Embedder(settings.model or DEFAULT_MODEL, show_progress=False)
    batcher = BatchingEncoder(embedder, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
    batched = BatchedEmbedder(embedder, batcher)
    data_dir = Path(settings.data_dir)
    cache = EmbeddingCache(data_dir / "embeddings")
    collections = CollectionManager(data_dir / "collections", batched, cache)
    metrics = Metrics(lambda: batcher.queue_depth, lambda: {n: len(collections.get(n).store)
                                                             for n in collections.names()})
    heavy: dict[str, Any] = {}
    heavy_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()
        collections.close()

    app = FastAPI(title="Flagstone", version="0.1.0", lifespan=lifespan,
                  description="Embeddings, collections with dense / sparse / ColBERT / BM25 / hybrid search, "
                              "reranking and retrieval-augmented answers.")
    app.state.settings, app.state.collections, app.state.batcher = settings, collections, batcher

    # -- errors -------------------------------------------------------------------------------------
    def problem(status: int, kind: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return problem(exc.status, exc.kind, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return problem(422, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    def plain_error(status: int, kind: str):
        async def handler(request: Request, exc: Exception):
            return problem(status, kind, str(exc))
        return handler

    # the most specific class wins (Starlette looks handlers up along the exception's MRO)
    for error, status, kind in ((CollectionNotFound, 404, "not_found"), (CollectionExists, 409, "conflict"),
                                (FlagstoneError, 400, "invalid_request"), (ValueError, 400, "invalid_request")):
        app.add_exception_handler(error, plain_error(status, kind))

    # -- middleware: body size, metrics -------------------------------------------------------------
    @app.middleware("http")
    async def _limits_and_metrics(request: Request, call_next):
        start = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return problem(400, "invalid_request", "bad Content-Length header")
            if too_big:
                return problem(413, "too_large", f"request body over {settings.max_body_bytes} bytes")
        elif request.method in ("POST", "PUT", "PATCH"):
            body = await request.body()  # chunked upload: read it once, bounded
            if len(body) > settings.max_body_bytes:
                return problem(413, "too_large", f"request body over {settings.max_body_bytes} bytes")
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.observe(request.method, path, response.status_code, time.perf_counter() - start)
        return response

    def authorised(request: Request) -> None:
        if not settings.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in settings.api_keys:
            raise HTTPProblem(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")

    auth = [Depends(authorised)]

    def check_texts(texts: list[str], what: str = "texts") -> None:
        if not texts:
            raise HTTPProblem(400, "invalid_request", f"{what} is empty")
        if len(texts) > settings.max_texts:
            raise HTTPProblem(413, "too_large", f"{len(texts)} {what}; at most {settings.max_texts} per request")
        for i, text in enumerate(texts):
            if not text.strip():
                raise HTTPProblem(400, "invalid_request", f"{what}[{i}] is empty")
            if len(text) > settings.max_chars:
                raise HTTPProblem(413, "too_large", f"{what}[{i}] has {len(text)} characters; at most "
                                                    f"{settings.max_chars}")
            if "\x00" in text:
                raise HTTPProblem(400, "invalid_request", f"{what}[{i}] contains a NUL character")

    def check_k(k: int) -> None:
        if k > settings.max_k:
            raise HTTPProblem(400, "invalid_request", f"k={k} is over the limit of {settings.max_k}")

    # -- service ------------------------------------------------------------------------------------
    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": embedder.name, "outputs": list(embedder.available_outputs),
                "collections": len(collections.names())}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    # -- embeddings ---------------------------------------------------------------------------------
    @app.post("/v1/embeddings", dependencies=auth)
    def openai_embeddings(body: OpenAIEmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else body.input
        check_texts(texts, "input")
        dense = batcher.encode(texts).dense
        if body.dimensions is not None:
            if body.dimensions > dense.shape[1]:
                raise HTTPProblem(400, "invalid_request", f"dimensions={body.dimensions} is more than the model's "
                                                          f"{dense.shape[1]}")
            dense = dense[:, : body.dimensions]
            dense = dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
        data = []
        for i, row in enumerate(dense.astype(np.float32)):
            value = base64.b64encode(row.tobytes()).decode() if body.encoding_format == "base64" else row.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(ids) for ids in embedder.tokenize(texts))
        return {"object": "list", "data": data, "model": embedder.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/embed", dependencies=auth)
    def embed(body: EmbedRequest) -> dict:
        check_texts(body.texts)
        if not (body.dense or body.sparse or body.colbert):
            raise HTTPProblem(400, "invalid_request", "ask for at least one of dense, sparse, colbert")
        try:
            emb = batcher.encode(body.texts, is_query=body.is_query, dense=body.dense, sparse=body.sparse,
                                 colbert=body.colbert)
        except MissingHeadError as exc:
            raise HTTPProblem(400, "invalid_request", str(exc)) from None
        out: dict[str, Any] = {"model": embedder.name}
        if emb.dense is not None:
            out["dense"] = emb.dense.tolist()
        if emb.sparse is not None:
            out["sparse"] = [embedder.lexical_tokens(emb.sparse.row(i)) for i in range(len(emb.sparse))]
        if emb.colbert is not None:
            out["colbert"] = [emb.colbert[i].tolist() for i in range(len(emb.colbert))]
        return out

    # -- collections --------------------------------------------------------------------------------
    @app.get("/collections", dependencies=auth)
    def list_collections() -> dict:
        return {"collections": [collections.get(n).describe() for n in collections.names()]}

    @app.post("/collections", status_code=201, dependencies=auth)
    def create_collection(body: CreateCollection) -> dict:
        return collections.create(body.name, index=body.index, description=body.description).describe()

    @app.get("/collections/{name}", dependencies=auth)
    def describe_collection(name: str) -> dict:
        return collections.get(name).describe()

    @app.delete("/collections/{name}", dependencies=auth)
    def delete_collection(name: str) -> dict:
        collections.delete(name)
        return {"deleted": name}

    @app.post("/collections/{name}/documents", dependencies=auth)
    def add_documents(name: str, body: AddDocuments) -> dict:
        collection = collections.get(name)
        check_texts([d.text for d in body.documents], "documents")
        ids = [d.id for d in body.documents]
        if len(set(ids)) != len(ids):
            raise HTTPProblem(400, "invalid_request", "the same id appears twice in one request")
        docs = [Document(d.id, d.text, d.metadata) for d in body.documents]
        try:
            count = collection.add(docs, overwrite=body.upsert)
        except IdError as exc:
            raise HTTPProblem(409, "conflict", str(exc)) from None
        return {"collection": name, "written": count, "documents": len(collection.store)}

    @app.post("/collections/{name}/documents/delete", dependencies=auth)
    def delete_documents(name: str, body: DeleteDocuments) -> dict:
        collection = collections.get(name)
        try:
            count = collection.delete(body.ids, missing_ok=body.missing_ok)
        except IdError as exc:
            raise HTTPProblem(404, "not_found", str(exc)) from None
        return {"collection": name, "deleted": count, "documents": len(collection.store)}

    @app.get("/collections/{name}/documents/{doc_id}", dependencies=auth)
    def get_document(name: str, doc_id: str) -> dict:
        try:
            return collections.get(name).get(doc_id).to_dict()
        except IdError as exc:
            raise HTTPProblem(404, "not_found", str(exc)) from None

    @app.post("/collections/{name}/search", dependencies=auth)
    def search(name: str, body: SearchRequest) -> dict:
        collection = collections.get(name)
        check_texts([body.query], "query")
        check_k(body.k)
        check_k(body.rerank_depth)
        reranker = load_reranker() if body.rerank else None
        hits = collection.search(body.query, mode=body.mode, k=body.k, where=body.filter, reranker=reranker,
                                 rerank_depth=body.rerank_depth)
        return {"collection": name, "mode": body.mode, "results": [
            {"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata, "signals": h.signals,
             "highlights": [list(s) for s in h.highlights]} for h in hits]}

    # -- rerank and ask -----------------------------------------------------------------------------
    def load_reranker():
        if settings.reranker is None:
            raise HTTPProblem(400, "not_configured", "no reranker configured: start the server with --reranker")
        with heavy_lock:
            if "reranker" not in heavy:
                from flagstone.models.reranker import CrossEncoderReranker

                heavy["reranker"] = CrossEncoderReranker(settings.reranker)
            return heavy["reranker"]

    @app.post("/rerank", dependencies=auth)
    def rerank_documents(body: RerankRequest) -> dict:
        check_texts([body.query], "query")
        check_texts(body.documents, "documents")
        from flagstone.models.reranker import rerank

        ranked = rerank(load_reranker(), body.query, body.documents, body.top_n)
        return {"results": [{"index": int(i), "score": float(s), "document": body.documents[int(i)]}
                            for i, s in zip(ranked.order, ranked.scores)]}

    def load_generator():
        with heavy_lock:
            if "generator" not in heavy:
                from flagstone.models.generator import load_generator as load

                heavy["generator"] = load(settings.generator, base_url=settings.generator_base_url)
            return heavy["generator"]

    @app.post("/ask", dependencies=auth)
    def ask(body: AskRequest) -> dict:
        from flagstone.rag import PIPELINES
        from flagstone.rag.base import ContextIndex
        from flagstone.rag.chunking import Chunk

        check_texts([body.question], "question")
        collection = collections.get(body.collection)
        retriever, docs = collection.retriever()
        if retriever is None:
            raise HTTPProblem(400, "invalid_request", f"collection {body.collection!r} is empty")
        chunks = [Chunk(d.id, d.id, n, 0, d.text, 0, len(d.text)) for n, d in enumerate(docs.values())]
        context = ContextIndex([(d.id, d.text) for d in docs.values()], chunks, retriever, "hybrid")
        generator = load_generator()
        options: dict[str, Any] = {"max_new_tokens": body.max_new_tokens}
        if body.pipeline in ("rag", "memorag", "search_o1"):
            options["k"] = body.k
        with heavy_lock:  # one generation at a time: the model is shared
            answer = PIPELINES[body.pipeline](generator, **options).ask(body.question, context)
        return answer.to_dict()

    return app
