"""The HTTP service (needs the ``server`` extra): embeddings (OpenAI-compatible and native), collections, search, rerank, ask, metrics.

``create_app(ServerSettings(...))`` builds a FastAPI app; ``flagstone serve`` runs it with uvicorn.
The endpoints live in ``flagstone.server.routes`` (one router per resource); what they share is the
``Service`` in ``flagstone.server.service``, kept on ``app.state.service``.
Every request body is validated against the OpenAPI schema; user mistakes get a 4xx with
``{"error": {"type", "message"}}``; nothing a client sends reaches a 5xx by design.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from flagstone.errors import FlagstoneError, NonFiniteError
from flagstone.distributed.cluster import ShardUnavailableError
from flagstone.server.collections import CollectionExists, CollectionNotFound, CollectionReadOnly
from flagstone.server.guard import RequestGuard
from flagstone.server.routes import ROUTERS
from flagstone.server.service import HTTPProblem, Service, problem
from flagstone.server.settings import ServerSettings, read_api_keys
from flagstone.server.store import StoreWriteError

__all__ = ["ServerSettings", "create_app", "read_api_keys"]

_HTTP_KINDS = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout", 409: "conflict",
               413: "too_large"}


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.service.close()


def create_app(settings: ServerSettings | None = None, *, embedder=None):
    """The FastAPI app. ``embedder`` may be passed in (tests share one); otherwise it is loaded here."""
    settings = settings or ServerSettings()
    service = Service.build(settings, embedder)
    # docs_url/redoc_url off: FastAPI's pages load their assets from a CDN and are blank offline; routes.health
    # serves /docs (and /redoc) as one self-contained page rendered from the spec instead
    app = FastAPI(title="Flagstone", version="0.1.0", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description="Embeddings, collections with dense / sparse / ColBERT / BM25 / hybrid search, "
                              "reranking and retrieval-augmented answers.")
    app.state.service = service
    app.state.settings, app.state.collections, app.state.batcher = settings, service.collections, service.batcher
    _install_error_handlers(app)
    _install_guard(app, service)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        response = problem(exc.status, exc.kind, exc.message)
        response.headers.update(exc.headers)  # e.g. Retry-After on a 503 from a full model pool
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return problem(422, "invalid_request", f"{where or 'body'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # what FastAPI and Starlette raise themselves (no route, wrong method, a body that cannot be parsed)
        # answers in the service's error format too, not as {"detail": ...}
        kind = _HTTP_KINDS.get(exc.status_code, "invalid_request" if exc.status_code < 500 else "server_error")
        response = problem(exc.status_code, kind, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(StoreWriteError)
    async def _not_stored(request: Request, exc: StoreWriteError):
        # nothing was written: 507 when the disk is full (the operator must free space), else 503
        if exc.no_space:
            return problem(507, "insufficient_storage", str(exc))
        response = problem(503, "unavailable", str(exc))
        if not exc.broken:
            response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(ShardUnavailableError)
    async def _shard_down(request: Request, exc: ShardUnavailableError):
        # a sharded collection's shard answered on none of its replicas: retry later, or ask for a partial result
        response = problem(503, "shard_unavailable", f"{exc}; send allow_partial: true to get the other shards' "
                                                     f"hits, flagged")
        response.headers["Retry-After"] = str(app.state.settings.retry_after_s)
        return response

    def plain_error(status: int, kind: str):
        async def handler(request: Request, exc: Exception):
            return problem(status, kind, str(exc))
        return handler

    # the most specific class wins (Starlette looks handlers up along the exception's MRO)
    # NonFiniteError: the model turned this input into NaN or infinity; the request is well formed but cannot
    # be answered, and no NaN may reach a JSON body (it is not JSON)
    for error, status, kind in ((CollectionNotFound, 404, "not_found"), (CollectionExists, 409, "conflict"),
                                (CollectionReadOnly, 409, "read_only"),
                                (NonFiniteError, 422, "non_finite"), (FlagstoneError, 400, "invalid_request"), (ValueError, 400, "invalid_request")):
        app.add_exception_handler(error, plain_error(status, kind))


def _install_guard(app: FastAPI, service: Service) -> None:
    """The outermost middleware: API key, body size and time limits, request metrics (see ``guard``)."""
    app.add_middleware(RequestGuard, settings=service.settings, metrics=service.metrics,
                       key_is_valid=service.key_is_valid)
