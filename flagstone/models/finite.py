"""One check for NaN and infinity in numbers that flow between layers (model outputs, scores, runs).

NaN compares false with everything, so a NaN score sorts to an arbitrary place and a NaN vector matches
nothing: left alone it silently corrupts a ranking. Every producer checks its output here and every consumer
of caller-supplied scores checks its input, so the first place a non-finite number appears is named.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flagstone.errors import NonFiniteError


def first_non_finite(values: np.ndarray) -> int | None:
    """Index of the first row (first axis) holding NaN or ±infinity, or None when all are finite."""
    array = np.asarray(values)
    if array.size == 0 or not np.issubdtype(array.dtype, np.floating):
        return None
    finite = np.isfinite(array)
    if finite.all():
        return None
    rows = finite.reshape(len(array), -1).all(axis=1) if array.ndim > 1 else finite
    return int(np.flatnonzero(~rows)[0])


def require_finite(values: np.ndarray, what: str, *, name_row: Callable[[int], str] | None = None) -> np.ndarray:
    """``values`` unchanged, or :class:`NonFiniteError` saying ``what`` holds NaN or infinity and where.

    ``name_row`` turns the offending row number into words (e.g. the caller's text index)."""
    row = first_non_finite(values)
    if row is None:
        return values
    value = np.asarray(values)[row]
    kind = "NaN" if np.isnan(value).any() else "infinity"
    where = name_row(row) if name_row is not None else f"row {row}"
    raise NonFiniteError(f"{what} holds {kind} at {where}")
