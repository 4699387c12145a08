"""The service's outermost ASGI middleware: API key first, then the body limits, then the app; every request is
counted and timed.

It works on the raw ASGI messages rather than on a ``Request`` so that nothing reads the body before it is
allowed to: a request with a wrong key is refused before one body byte is read, and a body is counted while it
arrives (declared with ``Content-Length`` or chunked alike) and cut off once it passes the limit or its deadline,
so an oversized or endless upload never sits in memory whole.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio

from flagstone.server.metrics import UNMATCHED, Metrics
from flagstone.server.service import problem

if TYPE_CHECKING:
    from flagstone.server.settings import ServerSettings

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

# open without a key even when keys are configured: a liveness check that says nothing else without a key, and
# the search page, a static shell with no data that asks for the key itself (a browser cannot send one to load it)
PUBLIC_PATHS = frozenset({"/health", "/"})


class BodyRefused(Exception):
    """Raised into the app from ``receive`` when the body passed its limit or deadline; the guard answers."""


class _GuardedBody:
    """``receive`` for the app: counts body bytes, and refuses past ``limit`` bytes or ``timeout`` seconds."""

    def __init__(self, receive: Receive, limit: int, timeout: float) -> None:
        self._receive = receive
        self.limit = limit
        self.timeout = timeout
        self.received = 0
        self.complete = False
        self.deadline: float | None = None
        self.refusal: tuple[int, str, str] | None = None

    async def receive(self) -> Message:
        if self.refusal is not None:  # the app asks again after being refused: the request is over for it
            return {"type": "http.disconnect"}
        if self.complete:  # after the body only a disconnect can come: no deadline for waiting on it
            return await self._receive()
        if self.deadline is None:  # the deadline covers the whole body, so a trickle cannot stretch it
            self.deadline = time.monotonic() + self.timeout
        try:
            with anyio.fail_after(max(self.deadline - time.monotonic(), 0.0)):
                message = await self._receive()
        except TimeoutError:
            self.refusal = (408, "timeout", f"request body not received within {self.timeout:g} s")
            raise BodyRefused(self.refusal[2]) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refusal = (413, "too_large", f"request body over {self.limit} bytes")
                raise BodyRefused(self.refusal[2])
            if not message.get("more_body", False):
                self.complete = True
        return message


class RequestGuard:
    """Wraps the whole app: ``app.add_middleware(RequestGuard, settings=..., metrics=..., key_is_valid=...)``, where
    ``key_is_valid`` takes the ``Authorization`` header's value."""

    def __init__(self, app: ASGIApp, *, settings: ServerSettings, metrics: Metrics,
                 key_is_valid: Callable[[str], bool]) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.key_is_valid = key_is_valid

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, observed_send)
        finally:
            # the route's template (set by the router), never the raw path: one series per route; path_format
            # leaves out converters ("{doc_id:path}" -> "{doc_id}"), as the OpenAPI spec does
            route = scope.get("route")
            path = getattr(route, "path_format", None) or getattr(route, "path", UNMATCHED)
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - start)

    def _needs_key(self, path: str) -> bool:
        if not self.settings.api_keys or path in PUBLIC_PATHS:
            return False
        return not (path == "/metrics" and self.settings.public_metrics)

    async def _guarded(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self._needs_key(scope["path"]) and not self.key_is_valid(headers.get("authorization", "")):
            # before any of the body is read: an unauthorised client cannot make the server buffer anything
            await _answer(scope, receive, send, _big_unread(headers), 401, "unauthorized",
                          "missing or wrong API key (Authorization: Bearer <key>)")
            return
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _answer(scope, receive, send, True, 400, "invalid_request", "bad Content-Length header")
                return
            if int(length) > limit:
                await _answer(scope, receive, send, _big_unread(headers), 413, "too_large",
                              f"request body over {limit} bytes")
                return
        body = _GuardedBody(receive, limit, self.settings.body_timeout_s)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.refusal is not None and not started:
                return  # the app's reply to a body it could not read; the guard's refusal goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, guarded_send)
        except Exception:
            if body.refusal is None or started:
                raise
            # else the app failed on the cut-off body (BodyRefused, or whatever it wrapped it in): refuse below
        if body.refusal is not None and not started:
            await _answer(scope, receive, send, _big_unread(headers, body.received), *body.refusal)


# a refused request's unread body up to this size is left for the server to read and throw away (keeping the
# connection); beyond it, or of unknown size, the connection is closed instead
DISCARD_BYTES = 1024 * 1024


def _big_unread(headers: dict[str, str], received: int = 0) -> bool:
    """Whether what is left of the body is unknown (chunked) or more than :data:`DISCARD_BYTES`."""
    length = headers.get("content-length", "").strip()
    if length.isdigit():
        return int(length) - received > DISCARD_BYTES
    return "transfer-encoding" in headers


async def _answer(scope: MutableMapping[str, Any], receive: Receive, send: Send, close: bool, status: int,
                  kind: str, message: str) -> None:
    response = problem(status, kind, message)
    if close:
        # the server would otherwise read (and discard) the whole rest of the upload before the next request on
        # this connection; closing stops it. Not for small remainders: closing a socket with unread data resets
        # it, and the reset can reach the client before it has read this answer
        response.headers["connection"] = "close"
    await response(scope, receive, send)
