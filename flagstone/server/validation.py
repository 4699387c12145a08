"""Checks on what clients send, applied while a request body is parsed, so nothing invalid gets as far as a shared
encoder batch or the document store.

JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which Python decodes into a ``str`` that cannot be encoded
as UTF-8: the tokenizer fails on it, and so does every response that would echo it back. ``StrictText`` refuses
such strings with a 422 at the door. ``Metadata`` does the same for document metadata, and bounds its nesting
and size; ``readable_metadata`` lets documents stored before these checks still be served. ``StrictJSONRoute``
refuses the ``NaN`` and ``Infinity`` that Python's JSON parser lets through.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict
from starlette.exceptions import HTTPException


def strict_utf8(value: str) -> str:
    """``value`` if it encodes as UTF-8; a ``ValueError`` naming the first offending character otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid UTF-8: a lone surrogate at character {exc.start}") from None
    return value


StrictText = Annotated[str, AfterValidator(strict_utf8)]


class StrictModel(BaseModel):
    """Base of the request bodies: no type coercion ("10" is not the integer 10, 1 is not true, "yes" is not a
    boolean), so a client's mistake is a 422 rather than a guess."""

    model_config = ConfigDict(strict=True)


# far below the nesting at which serialising a response gives up (FastAPI's encoder stops near 255 levels)
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 64 * 1024  # per document, as UTF-8 JSON


def metadata_problem(metadata: Any, *, what: str = "metadata", max_depth: int = MAX_METADATA_DEPTH,
                     max_bytes: int = MAX_METADATA_BYTES) -> str | None:
    """Why ``metadata`` cannot be stored and sent back as JSON, or None when it can: every string (keys too)
    valid UTF-8, every number finite, at most ``max_depth`` levels of objects and arrays, at most ``max_bytes``.
    Walks with a stack, not recursion, so any depth gets an answer."""
    stack: list[tuple[Any, str, int]] = [(metadata, what, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= max_depth:
                return f"{where}: nested more than {max_depth} levels deep"
            if isinstance(value, dict):
                for key, child in value.items():
                    if not isinstance(key, str):
                        return f"{where}: key {key!r} is not a string"
                    if _utf8_problem(key):
                        return f"{where}: a key is {_utf8_problem(key)}"
                    stack.append((child, f"{where}.{key}", depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(value))
        elif isinstance(value, str):
            if _utf8_problem(value):
                return f"{where}: {_utf8_problem(value)}"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{where}: {value} is not a finite number"
        elif not (value is None or isinstance(value, (bool, int))):
            return f"{where}: a {type(value).__name__} is not a JSON value"
    size = len(json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    if size > max_bytes:
        return f"{what} is {size} bytes as JSON; at most {max_bytes}"
    return None


def _utf8_problem(text: str) -> str | None:
    try:
        strict_utf8(text)
    except ValueError as exc:
        return str(exc)
    return None


def checked_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Pydantic validator for metadata on write."""
    problem = metadata_problem(metadata)
    if problem is not None:
        raise ValueError(problem)
    return metadata


Metadata = Annotated[dict[str, Any], AfterValidator(checked_metadata)]


def checked_filter(where: dict[str, Any]) -> dict[str, Any]:
    """Pydantic validator for a search filter: the values it compares with obey the rules of metadata."""
    problem = metadata_problem(where, what="filter")
    if problem is not None:
        raise ValueError(problem)
    return where


Filter = Annotated[dict[str, Any], AfterValidator(checked_filter)]


def readable_metadata(metadata: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Stored metadata for a response: ``(metadata, None)``, or ``(None, why)`` for metadata stored before it was
    checked on write that cannot be sent as JSON -- the document is still served, with the reason, instead of
    the whole response failing."""
    problem = metadata_problem(metadata)
    if problem is None:
        return metadata, None
    return None, problem.encode("utf-8", "backslashreplace").decode("utf-8")


def _refuse_constant(name: str) -> float:
    # json.loads accepts NaN, Infinity and -Infinity, which are not JSON (RFC 8259) and are no number a request
    # needs; let in, they would compare, sort and serialise (as null) wrongly wherever they went
    raise HTTPException(422, f"{name} is not valid JSON: numbers must be finite")


class StrictJSONRequest(Request):
    """A request whose JSON body may not hold ``NaN`` or ``Infinity``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_constant=_refuse_constant)
        return self._json


class StrictJSONRoute(APIRoute):
    """Route class for the service's routers: endpoints parse bodies with :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
