"""Checks on what clients send, applied while a request body is parsed, so nothing invalid gets as far as a shared
encoder batch or the document store.

JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which Python decodes into a ``str`` that cannot be encoded
as UTF-8: the tokenizer fails on it, and so does every response that would echo it back. ``StrictText`` refuses
such strings with a 422 at the door.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def strict_utf8(value: str) -> str:
    """``value`` if it encodes as UTF-8; a ``ValueError`` naming the first offending character otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid UTF-8: a lone surrogate at character {exc.start}") from None
    return value


StrictText = Annotated[str, AfterValidator(strict_utf8)]
