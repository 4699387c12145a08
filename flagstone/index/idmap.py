"""External string ids of an index's rows, stored compactly: no Python object per document.

Ids live as one UTF-8 byte buffer with row offsets (about ``len(id) + 9`` bytes per row with the live flag)
and a lookup table of 64-bit FNV-1a hashes, sorted, with the row of each (12 bytes per row). A lookup hashes
the asked ids together, finds them by binary search and compares the stored bytes, so a hash collision never
returns the wrong row. Ids added since the table was last built sit in a small dict (the tail), folded into
the buffer once it grows past an eighth of the rows. The buffer, offsets and table are saved with the index,
so a load reads them and builds nothing. The layout before (a ``str`` per id in a list and a dict) cost
about 150 bytes per document.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from flagstone.errors import IdError

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIN_TAIL = 1024  # ids kept in the dict before they are folded in, whatever the size of the index


def _encode(doc_id: str) -> bytes:
    # surrogatepass: any Python str round-trips, even one holding a lone surrogate
    return doc_id.encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets): the UTF-8 bytes of ``ids`` end to end (uint8) and where each starts (int64, one more
    than there are ids; id n is ``bytes[offsets[n]:offsets[n + 1]]``)."""
    encoded = [_encode(i) for i in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def id_hashes(data: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """64-bit FNV-1a hash of the bytes of each id (of ``rows`` only, when given), vectorised: one pass per
    byte position over the ids at least that long (longest first, so those are always a prefix)."""
    starts = offsets[:-1] if rows is None else offsets[rows]
    lengths = (offsets[1:] if rows is None else offsets[rows + 1]) - starts
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.uint64)
    order = np.argsort(-lengths, kind="stable")
    longest_first = lengths[order]
    starts = starts[order]
    hashes = np.full(len(lengths), _FNV_OFFSET, dtype=np.uint64)
    for j in range(int(longest_first[0])):
        count = int(np.searchsorted(-longest_first, -j, side="left"))  # ids with more than j bytes
        hashes[:count] ^= data[starts[:count] + j]
        hashes[:count] *= _FNV_PRIME  # wraps modulo 2^64, as FNV wants
    out = np.empty_like(hashes)
    out[order] = hashes
    return out


def _same_bytes(data_a: np.ndarray, starts_a: np.ndarray, ends_a: np.ndarray, data_b: np.ndarray,
                starts_b: np.ndarray, ends_b: np.ndarray) -> np.ndarray:
    """Whether byte range n of ``data_a`` equals byte range n of ``data_b``, for every n (vectorised)."""
    same = (ends_a - starts_a) == (ends_b - starts_b)
    lengths = np.where(same, ends_a - starts_a, 0)
    ends = np.cumsum(lengths)
    within = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)
    differ = data_a[np.repeat(starts_a, lengths) + within] != data_b[np.repeat(starts_b, lengths) + within]
    same[np.repeat(np.arange(len(lengths)), lengths)[differ]] = False
    return same


class IdMap:
    """Maps external string ids to row positions; refuses duplicates. ``len`` counts live ids; a removed id
    keeps its row (``id_at(row)`` becomes None) until the owner compacts (``reorder``)."""

    def __init__(self) -> None:
        # rows [0, _base_rows): bytes and offsets, found through the sorted hash table
        self._bytes = np.zeros(0, dtype=np.uint8)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._hashes = np.zeros(0, dtype=np.uint64)  # of the rows live when the table was built, sorted
        self._hash_rows = np.zeros(0, dtype=np.int64)  # the row of each hash
        # rows [_base_rows, rows): the tail, ids added since, by row and (live ones) in a dict
        self._tail: list[str] = []
        self._tail_rows: dict[str, int] = {}
        self._live = np.zeros(0, dtype=bool)
        self._count = 0

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __contains__(self, doc_id: str) -> bool:
        return bool(self._lookup([str(doc_id)])[0] >= 0)

    @property
    def rows(self) -> int:
        """Rows ever allocated, live or removed."""
        return len(self._live)

    @property
    def _base_rows(self) -> int:
        return len(self._offsets) - 1

    def live_mask(self) -> np.ndarray:
        """A copy of the live flag of every row."""
        return self._live.copy()

    def id_at(self, row: int) -> str | None:
        """The id of ``row`` (None when it was removed)."""
        row = int(row)
        if not 0 <= row < len(self._live):
            raise IndexError(f"row {row} out of range for {len(self._live)} rows")
        if not self._live[row]:
            return None
        if row >= self._base_rows:
            return self._tail[row - self._base_rows]
        return _decode(self._bytes[self._offsets[row] : self._offsets[row + 1]].tobytes())

    def ids_at(self, rows: Sequence[int] | np.ndarray) -> list[str | None]:
        """The ids of ``rows``, in that order (None for removed rows)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if len(rows) and not 0 <= rows.min() <= rows.max() < len(self._live):
            raise IndexError(f"rows out of range for {len(self._live)} rows")
        packed = rows[(rows < self._base_rows) & self._live[rows]]
        # the bytes of all asked ids gathered in one go, decoded once when they are ASCII (the usual case)
        starts = self._offsets[packed]
        lengths = self._offsets[packed + 1] - starts
        ends = np.cumsum(lengths)
        begins = (ends - lengths).tolist()
        raw = self._bytes[np.repeat(starts - ends + lengths, lengths) + np.arange(ends[-1] if len(ends) else 0)]
        raw = raw.tobytes()
        if raw.isascii():
            text = raw.decode("ascii")
            found = [text[a:b] for a, b in zip(begins, ends.tolist())]
        else:
            found = [_decode(raw[a:b]) for a, b in zip(begins, ends.tolist())]
        if len(packed) == len(rows):
            return found
        taken = iter(found)
        base = self._base_rows
        return [None if not self._live[r] else next(taken) if r < base else self._tail[r - base] for r in rows]

    @property
    def ids(self) -> list[str | None]:
        """Id of every row (None for removed rows), as a new list: it holds one Python string per row, so
        prefer ``id_at`` / ``ids_at`` for a few rows."""
        return self.ids_at(range(self.rows))

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids``, in that order; unknown ids raise :class:`IdError` naming them."""
        ids = [str(i) for i in ids]
        rows = self._lookup(ids)
        if (rows < 0).any():
            missing = [i for i, r in zip(ids, rows) if r < 0]
            raise IdError(f"{len(missing)} unknown ids, e.g. {missing[:3]}")
        return rows

    def known_rows(self, ids: Sequence[str]) -> np.ndarray:
        """Sorted rows of those ``ids`` that are live here; unknown ids are skipped."""
        rows = self._lookup([str(i) for i in ids])
        return np.unique(rows[rows >= 0])

    def _lookup(self, ids: list[str]) -> np.ndarray:
        """Row of each id, -1 where it is not live here."""
        rows = np.full(len(ids), -1, dtype=np.int64)
        if self._tail_rows:
            for n, doc_id in enumerate(ids):
                rows[n] = self._tail_rows.get(doc_id, -1)
        if len(self._hashes) == 0:
            return rows
        asked = np.flatnonzero(rows < 0)
        data, offsets = pack_ids([ids[n] for n in asked])
        hashes = id_hashes(data, offsets)
        first = np.searchsorted(self._hashes, hashes)
        at = np.minimum(first, len(self._hashes) - 1)
        candidate = self._hash_rows[at].astype(np.int64)
        found = (self._hashes[at] == hashes) & self._live[candidate]
        found[found] = _same_bytes(self._bytes, self._offsets[candidate[found]],
                                   self._offsets[candidate[found] + 1], data, offsets[:-1][found],
                                   offsets[1:][found])
        rows[asked[found]] = candidate[found]
        # rows sharing a hash sit next to each other in the table; the first was not it: try the others
        for n in np.flatnonzero(~found & (first < len(self._hashes)) & (self._hashes[at] == hashes)):
            wanted = data[offsets[n] : offsets[n + 1]].tobytes()
            for place in range(first[n] + 1, len(self._hashes)):
                if self._hashes[place] != hashes[n]:
                    break
                row = int(self._hash_rows[place])
                if self._live[row] and self._bytes[self._offsets[row] : self._offsets[row + 1]].tobytes() == wanted:
                    rows[asked[n]] = row
                    break
        return rows

    # -- writing -------------------------------------------------------------------------------------
    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> IdMap:
        id_map = cls()
        id_map.extend(ids)
        return id_map

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> IdMap:
        """The map :meth:`arrays` wrote, every row live; the arrays are used as they are (memory-mapped ones
        stay on disk until read). Malformed arrays or repeated ids raise ValueError or :class:`IdError`."""
        data, offsets = np.asarray(arrays["id_bytes"]), np.asarray(arrays["id_offsets"])
        if data.dtype != np.uint8 or data.ndim != 1 or offsets.dtype != np.int64 or offsets.ndim != 1:
            raise ValueError("id arrays must be uint8 bytes and int64 offsets")
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(data) or (np.diff(offsets) < 1).any():
            raise ValueError("id offsets must start at 0, end at the byte count and grow by at least 1")
        id_map = cls()
        id_map._bytes, id_map._offsets = data, offsets
        id_map._live = np.ones(len(offsets) - 1, dtype=bool)
        id_map._count = len(offsets) - 1
        if "id_hashes" in arrays:
            # the saved table, read rather than rebuilt: no scratch memory, which would stay resident
            hashes, rows = np.asarray(arrays["id_hashes"]), np.asarray(arrays["id_hash_rows"])
            if hashes.dtype != np.uint64 or rows.dtype.kind != "i" or len(hashes) != len(rows) or \
                    len(rows) != id_map._count or (len(rows) and not 0 <= rows.min() <= rows.max() < len(rows)) \
                    or (hashes[1:] < hashes[:-1]).any():
                raise ValueError("an id lookup table that does not fit the ids")
            id_map._hashes, id_map._hash_rows = hashes, rows
        else:
            id_map._build_table()
        _check_unique(data, offsets, id_map._hashes, id_map._hash_rows)
        return id_map

    def arrays(self) -> dict[str, np.ndarray]:
        """Every row's id, as ``id_bytes`` / ``id_offsets`` (see :func:`pack_ids`), and the lookup table
        (``id_hashes`` / ``id_hash_rows``): what :meth:`from_arrays` reads."""
        data, offsets, hashes, rows = self._folded()
        return {"id_bytes": data, "id_offsets": offsets, "id_hashes": hashes, "id_hash_rows": rows}

    def extend(self, ids: Sequence[str]) -> None:
        """Give ``ids`` the next rows; empty, repeated or already present ids raise :class:`IdError` and
        change nothing."""
        new = [str(i) for i in ids]
        if any(not i for i in new):
            raise IdError("ids must be non-empty strings")
        if len(set(new)) != len(new):
            repeated = sorted(i for i, n in Counter(new).items() if n > 1)
            raise IdError(f"duplicate ids in one add() call: {repeated[:3]}")
        clash = [i for i, row in zip(new, self._lookup(new)) if row >= 0]
        if clash:
            raise IdError(f"ids already in the index: {clash[:3]}")
        first = self.rows
        self._tail += new
        self._tail_rows.update(zip(new, range(first, first + len(new))))
        self._live = np.concatenate([self._live, np.ones(len(new), dtype=bool)])
        self._count += len(new)
        if len(self._tail) > max(_MIN_TAIL, self._base_rows // 8):
            self._fold_tail()

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Forget ``ids``; returns their rows. Unknown ids raise :class:`IdError` naming them."""
        rows = self.positions(ids)
        if len(np.unique(rows)) != len(rows):
            raise IdError(f"an id repeated in one remove() call: "
                          f"{sorted(i for i, n in Counter(map(str, ids)).items() if n > 1)[:3]}")
        for doc_id, row in zip(map(str, ids), rows):
            if row >= self._base_rows:
                del self._tail_rows[doc_id]
        self._live[rows] = False
        self._count -= len(rows)
        return rows

    def truncate(self, rows: int) -> None:
        """Drop every row from ``rows`` on (an add that failed after its ids were taken)."""
        if rows >= self.rows:
            return
        if rows < self._base_rows:
            self._bytes = self._bytes[: self._offsets[rows]]
            self._offsets = self._offsets[: rows + 1]
            self._tail, self._tail_rows = [], {}
            self._live = self._live[:rows]
            self._build_table()
        else:
            dropped = self._tail[rows - self._base_rows :]
            del self._tail[rows - self._base_rows :]
            for doc_id in dropped:
                if self._tail_rows.get(doc_id, -1) >= rows:
                    del self._tail_rows[doc_id]
            self._live = self._live[:rows]
        self._count = int(self._live.sum())

    def reorder(self, rows: np.ndarray) -> None:
        """Keep only ``rows``, in that order: new row n is old row ``rows[n]``."""
        rows = np.asarray(rows, dtype=np.int64)
        self._fold_tail()
        starts = self._offsets[rows]
        lengths = self._offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # byte b of new row n comes from old position starts[n] + (b - offsets[n])
        source = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        self._bytes = self._bytes[source]
        self._offsets = offsets
        self._live = self._live[rows]
        self._count = int(self._live.sum())
        self._build_table()

    def _folded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Bytes, offsets and lookup table with the tail folded in, leaving this map as it is (``arrays`` is
        a read: ``describe()`` may run beside searches)."""
        if not self._tail:
            return self._bytes, self._offsets, self._hashes, self._hash_rows
        data, offsets = pack_ids(self._tail)
        data = np.concatenate([self._bytes, data])
        offsets = np.concatenate([self._offsets, offsets[1:] + self._offsets[-1]])
        return (data, offsets, *_table(data, offsets, self._live))

    def _fold_tail(self) -> None:
        """Move the tail's ids into the byte buffer and the lookup table."""
        if self._tail:
            self._bytes, self._offsets, self._hashes, self._hash_rows = self._folded()
            self._tail, self._tail_rows = [], {}

    def _build_table(self) -> None:
        self._hashes, self._hash_rows = _table(self._bytes, self._offsets, self._live)


def _table(data: np.ndarray, offsets: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lookup table of the live rows among those packed in ``data`` / ``offsets``: their hashes, sorted,
    and the row of each."""
    rows = np.flatnonzero(live[: len(offsets) - 1])
    hashes = id_hashes(data, offsets, rows)
    order = np.argsort(hashes, kind="stable")
    return hashes[order], rows[order].astype(np.int32 if len(live) < 2**31 else np.int64)


def _check_unique(data: np.ndarray, offsets: np.ndarray, hashes: np.ndarray, rows: np.ndarray) -> None:
    """:class:`IdError` naming ids that the table holds twice (rows that share a hash may be a collision)."""
    shared = np.flatnonzero(hashes[1:] == hashes[:-1])
    groups: dict[int, list[str]] = {}
    for n in np.union1d(shared, shared + 1):
        row = int(rows[n])
        groups.setdefault(int(hashes[n]), []).append(_decode(data[offsets[row] : offsets[row + 1]].tobytes()))
    repeated = sorted(i for ids in groups.values() for i, count in Counter(ids).items() if count > 1)
    if repeated:
        raise IdError(f"duplicate ids: {repeated[:3]}")
