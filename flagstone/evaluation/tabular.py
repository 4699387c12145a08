"""Reading evaluation data from CSV, TSV or JSONL files by named (or numbered) columns."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

from flagstone._io import iter_jsonl, require_file
from flagstone.errors import DataError

Column = str | int  # a header name, a JSON key, or a 0-based position in a file without a header


def read_columns(
    path: str | os.PathLike[str],
    columns: Mapping[str, Column],
    *,
    header: bool = True,
) -> dict[str, list[str]]:
    """Read the named ``columns`` of a table into ``{role: [values]}``, one value per row.

    ``columns`` maps what a task needs (e.g. ``"sentence1"``) to where it is in the file: a header name
    (CSV/TSV with a header, JSONL key) or a position (files without a header). The format follows the
    suffix: ``.csv``, ``.tsv`` / ``.txt`` (tab-separated, no quoting, as MSRP ships), ``.jsonl``.
    Missing columns, short rows and empty cells raise :class:`DataError` with file and line.
    """
    p = require_file(path, "data file")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(p, columns)
    if suffix not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{p}: unknown table format {suffix!r} (use .csv, .tsv or .jsonl)")
    out: dict[str, list[str]] = {role: [] for role in columns}
    try:
        with p.open(encoding="utf-8-sig", newline="") as handle:
            reader = _reader(handle, suffix)
            positions = _positions(p, columns, next(reader, None) if header else None, header)
            first_line = 2 if header else 1
            for line_no, row in enumerate(reader, start=first_line):
                if not row or all(not cell.strip() for cell in row):
                    continue
                for role, pos in positions.items():
                    if pos >= len(row):
                        raise DataError(f"{p}:{line_no}: row has {len(row)} columns, {role!r} is column {pos + 1}")
                    value = row[pos].strip()
                    if not value:
                        raise DataError(f"{p}:{line_no}: empty {role!r}")
                    out[role].append(value)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{p}: malformed {suffix[1:].upper()} ({exc})") from None
    if not next(iter(out.values()), []):
        raise DataError(f"{p}: no rows")
    return out


def first_row(path: str | os.PathLike[str]) -> list[str] | None:
    """The first row of a CSV/TSV file as cells (None for an empty file): the row :func:`read_columns` takes
    as the header with ``header=True``."""
    p = require_file(path, "data file")
    suffix = p.suffix.lower()
    try:
        with p.open(encoding="utf-8-sig", newline="") as handle:
            return next(_reader(handle, suffix), None)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 (byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{p}: malformed {suffix[1:].upper()} ({exc})") from None


def _reader(handle, suffix: str):
    if suffix == ".csv":
        return csv.reader(handle)
    return csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)  # TSV without quoting, as MSRP ships


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _positions(p: Path, columns: Mapping[str, Column], head: list[str] | None, header: bool) -> dict[str, int]:
    if header and head is None:
        raise DataError(f"{p}: the file is empty")
    names = [h.strip() for h in head] if head is not None else []
    positions = {}
    for role, col in columns.items():
        if isinstance(col, int):
            positions[role] = col
        elif not header:
            raise DataError(f"{p}: column {col!r} is a name but the task says the file has no header")
        elif col in names:
            positions[role] = names.index(col)
        else:
            raise DataError(f"{p}: no column {col!r} for {role!r} (columns: {', '.join(names)})")
    return positions


def _read_jsonl(p: Path, columns: Mapping[str, Column]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {role: [] for role in columns}
    for line_no, row in iter_jsonl(p):
        for role, key in columns.items():
            value = row.get(str(key))
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(f"{p}:{line_no}: missing or empty {key!r} (for {role!r})")
            out[role].append(str(value).strip() if isinstance(value, str) else str(value))
    if not next(iter(out.values()), []):
        raise DataError(f"{p}: no rows")
    return out


def parse_floats(values: list[str], path: str | os.PathLike[str], role: str) -> list[float]:
    """Numbers from a text column, with a clear error naming the first bad row."""
    out = []
    for i, v in enumerate(values):
        try:
            out.append(float(v))
        except ValueError:
            raise DataError(f"{path}: {role!r} of data row {i + 1} is {v!r}, not a number") from None
    return out
