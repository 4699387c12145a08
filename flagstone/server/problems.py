"""The exception every route raises for a client-visible error (status, kind, message, extra headers).

Its own module so that helpers the service builds (the model pool) can raise it without importing the service.
"""
from __future__ import annotations


class HTTPProblem(Exception):
    def __init__(self, status: int, kind: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}
