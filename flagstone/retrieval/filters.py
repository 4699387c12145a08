"""Metadata filters: which documents a ``where`` clause lets through.

A filter is ``{"field": value}`` (equal) or ``{"field": {"$in": [values]}}``; every field must hold. Values
compare as JSON values (a number never equals a boolean). The service evaluates a filter over a collection's
documents and passes the matching ids as an allow-list to the index search; a sharded retriever has each shard
evaluate it over its own documents, so the same function decides in both places.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from flagstone.errors import InvalidTextError


def check_filter(where: Mapping | None) -> dict:
    """A metadata filter: ``{"field": value}`` (equal) or ``{"field": {"$in": [values]}}``, all must hold."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise InvalidTextError("filter must be an object of field: value or field: {\"$in\": [...]}")
    for key, cond in where.items():
        if isinstance(cond, Mapping):
            if set(cond) != {"$in"} or not isinstance(cond["$in"], list):
                raise InvalidTextError(f"filter on {key!r}: only {{\"$in\": [...]}} is supported besides equality")
    return dict(where)


def json_equal(a: object, b: object) -> bool:
    """Equality of JSON values: Python's ``==`` says ``1 == True`` and ``[0] == [False]``, JSON does not (a number
    and a boolean never match; ``1`` and ``1.0`` are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys()
                and all(json_equal(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(json_equal(x, y) for x, y in zip(a, b)))
    return a == b  # strings and null


def matches(metadata: Mapping, where: Mapping) -> bool:
    for key, cond in where.items():
        value = metadata.get(key)
        if isinstance(cond, Mapping):
            if not any(json_equal(value, option) for option in cond["$in"]):
                return False
        elif not json_equal(value, cond):
            return False
    return True


def matching_ids(ids: Iterable[str], metadata: Mapping[str, Mapping], where: Mapping) -> list[str]:
    """Those of ``ids`` whose metadata (``{}`` when a document has none) passes ``where``, in the given order."""
    return [i for i in ids if matches(metadata.get(i, {}), where)]
