"""Durable document storage for one collection: a snapshot plus a write-ahead log.

Every acknowledged write is one line in ``wal.jsonl``, flushed and fsynced before the call returns, so it
survives ``kill -9`` and power loss of the process. At start the snapshot is read and the log replayed; a
torn last line (a write that was never acknowledged) is dropped. ``checkpoint`` folds the log into a new
snapshot written atomically, then starts an empty log.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flagstone._io import atomic_write
from flagstone.errors import DataError, IdError

SNAPSHOT, WAL, SETTINGS = "snapshot.jsonl", "wal.jsonl", "collection.json"
_log = logging.getLogger(__name__)


class StoreWriteError(Exception):
    """A write could not be made durable (full disk, I/O error); it was not applied and is not in the log.
    ``broken``: the log could not be put back as it was, so the store refuses writes until restarted."""

    def __init__(self, message: str, *, no_space: bool, broken: bool = False) -> None:
        super().__init__(message)
        self.no_space, self.broken = no_space, broken


@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "text": self.text, "metadata": self.metadata}


class DocumentStore:
    """Documents by id, in insertion order, persisted under ``folder``."""

    def __init__(self, folder: str | os.PathLike, *, checkpoint_every: int = 1000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.checkpoint_every = checkpoint_every
        self.documents: dict[str, Document] = {}
        self.version = 0  # bumps on every change: the index compares it with the version it was built at
        self._lock = threading.Lock()
        self._logged = 0
        self.dropped_tail = False
        self._broken: str | None = None  # why writes are refused (a failed write the log could not undo)
        self._load()
        self._wal = self._open_wal()

    def _open_wal(self):
        # unbuffered: a write that fails must not stay in a buffer and reach the file with the next write
        return open(self.folder / WAL, "ab", buffering=0)  # noqa: SIM115 -- held for the store's life

    def __len__(self) -> int:
        return len(self.documents)

    # -- reading at start ------------------------------------------------------------------------
    def _load(self) -> None:
        snapshot = self.folder / SNAPSHOT
        if snapshot.is_file():
            for n, line in enumerate(snapshot.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        doc = json.loads(line)
                        self.documents[doc["id"]] = Document(doc["id"], doc["text"], doc.get("metadata") or {})
                    except (ValueError, KeyError, TypeError):
                        raise DataError(f"{snapshot}:{n}: damaged snapshot line") from None
        wal = self.folder / WAL
        if wal.is_file():
            lines = wal.read_bytes().split(b"\n")
            # the last piece has no newline: if it holds anything, the write was cut and never acknowledged
            good, self.dropped_tail = lines[:-1], bool(lines[-1].strip())
            for n, line in enumerate(good, 1):
                if not line.strip():
                    continue
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    if n < len(good):
                        raise DataError(f"{wal}:{n}: damaged log line") from None
                    good, self.dropped_tail = good[:-1], True  # torn final line: its newline landed, not its data
                    break
                self._logged += 1
            if self.dropped_tail:  # appends must start on a clean line
                with atomic_write(wal, "wb") as f:
                    f.write(b"".join(line + b"\n" for line in good))
        self.version = 1

    def _apply(self, record: Mapping) -> None:
        if record["op"] == "upsert":
            for doc in record["documents"]:
                self.documents.pop(doc["id"], None)  # an update moves the document to the end
                self.documents[doc["id"]] = Document(doc["id"], doc["text"], doc.get("metadata") or {})
        elif record["op"] == "delete":
            for doc_id in record["ids"]:
                self.documents.pop(doc_id, None)
        else:
            raise KeyError(record["op"])

    # -- writing ---------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        """Append one line and fsync it; on failure cut the log back to where it was and raise
        ``StoreWriteError``, so a write answered with an error is never replayed later."""
        if self._broken is not None:
            raise StoreWriteError(self._broken, no_space=False, broken=True)
        data = (json.dumps(record) + "\n").encode("utf-8")
        fd = self._wal.fileno()
        start = os.fstat(fd).st_size  # append mode: the line goes at the end
        try:
            view = memoryview(data)
            while view:
                view = view[self._wal.write(view):]
            os.fsync(fd)
        except OSError as exc:
            no_space = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            try:
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError as undo:
                # the log may now hold part (or all) of a write the client is told failed: refuse every
                # further write rather than append after it; a restart drops a torn tail
                self._broken = (f"the write-ahead log of {self.folder.name!r} could not be restored after a "
                                f"failed write ({undo.strerror}); restart the service")
                _log.error("%s", self._broken)
                raise StoreWriteError(self._broken, no_space=no_space, broken=True) from exc
            what = "no space left on the device" if no_space else f"I/O error: {exc.strerror or exc}"
            raise StoreWriteError(f"the write was not stored ({what}); nothing was changed", no_space=no_space) \
                from exc
        self._logged += 1

    def upsert(self, documents: Iterable[Document], *, overwrite: bool = True) -> int:
        """Add or replace documents; with ``overwrite=False`` an existing id is an error and nothing is written."""
        docs = list(documents)
        with self._lock:
            if not overwrite:
                clash = [d.id for d in docs if d.id in self.documents]
                if clash:
                    raise IdError(f"ids already in the collection: {clash[:3]} (use upsert to replace)")
            record = {"op": "upsert", "documents": [d.to_dict() for d in docs]}
            self._log(record)
            self._apply(record)
            self.version += 1
            self._maybe_checkpoint()
        return len(docs)

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        with self._lock:
            missing = [i for i in ids if i not in self.documents]
            if missing and not missing_ok:
                raise IdError(f"{len(missing)} unknown ids, e.g. {missing[:3]}")
            present = [i for i in dict.fromkeys(ids) if i in self.documents]  # a repeated id counts once
            if present:
                record = {"op": "delete", "ids": present}
                self._log(record)
                self._apply(record)
                self.version += 1
                self._maybe_checkpoint()
        return len(present)

    def _maybe_checkpoint(self) -> None:
        """After a logged write: the write is durable already, so a checkpoint that fails (full disk) must not
        turn its success into an error; the log keeps growing and the next write tries again."""
        if self._logged >= self.checkpoint_every:
            try:
                self._checkpoint_locked()
            except OSError as exc:
                _log.warning("collection folder %r: checkpoint failed (%s); the log keeps every write",
                             self.folder.name, exc)

    def checkpoint(self) -> None:
        with self._lock:
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        """Write every document to a new snapshot, then empty the log (a crash in between replays the log
        onto the new snapshot, which gives the same documents)."""
        with atomic_write(self.folder / SNAPSHOT, "w") as f:
            for doc in self.documents.values():
                f.write(json.dumps(doc.to_dict()) + "\n")
        # the old log stays open (and correct: replaying it onto the new snapshot gives the same documents)
        # until the empty one has replaced it, so a failure here leaves a working store
        with atomic_write(self.folder / WAL, "w"):
            pass
        old, self._wal = self._wal, self._open_wal()
        old.close()
        self._logged = 0

    def snapshot(self) -> tuple[int, list[Document]]:
        """The version and the documents at that version (consistent under concurrent writes)."""
        with self._lock:
            return self.version, list(self.documents.values())

    def close(self) -> None:
        with self._lock:
            self._wal.close()
