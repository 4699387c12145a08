"""Collections: named, persistent document sets with an index kept in step with their documents.

Writes go to the collection's :class:`DocumentStore` (durable before they are acknowledged) and their
embeddings to the on-disk embedding cache. The retriever is built from the store (reading the cache) on the
first search after start-up; from then on every write is applied to it incrementally, under the same lock
as the store write, so a search always sees every acknowledged write and one write costs one write's work.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flagstone._io import atomic_write
from flagstone.errors import DataError, FlagstoneError, IdError, InvalidTextError
from flagstone.retrieval.filters import check_filter, matches
from flagstone.server.store import SETTINGS, Document, DocumentStore

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # use with fullmatch: "$" would let "abc\n" through
INDEX_KINDS = ("flat", "ivf", "hi2")
_WORD = re.compile(r"\w+", re.UNICODE)
RETRIEVER = "retriever"  # sub-folder holding the retriever saved at shutdown
_log = logging.getLogger(__name__)


class ReadWriteLock:
    """Many searches at once, or one write alone; a waiting write goes before newly arriving searches."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class CollectionNotFound(FlagstoneError):
    """No collection of that name."""


class CollectionExists(FlagstoneError):
    """A collection of that name already exists."""


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    text: str
    metadata: dict
    signals: dict[str, float]
    highlights: list[tuple[int, int]]  # character spans of document words matching a query term


def search_hits(bm25, query: str, hits, found: Mapping[str, tuple[str, dict]], k: int,
                reranker=None) -> list[SearchHit]:
    """The first query's hits as :class:`SearchHit` (text, metadata, per-signal scores, highlights), reranked
    first when a reranker is given; ``found`` holds each hit's (text, metadata)."""
    ids = hits.ids[0]
    scores = [float(s) for s in hits.scores[0][: len(ids)]]
    signals = [{name: float(values[0][j]) for name, values in hits.signals.items()} for j in range(len(ids))]
    if reranker is not None and ids:
        from flagstone.models.reranker import rerank

        ranked = rerank(reranker, query, [found[i][0] for i in ids])
        order = ranked.order.tolist()
        for pos, score in zip(order, ranked.scores.tolist()):
            signals[pos]["rerank"] = float(score)
        ids, scores, signals = ([ids[p] for p in order], [float(s) for s in ranked.scores],
                                [signals[p] for p in order])
    analyzer = bm25.tokenizer if bm25 is not None else None
    terms = set(analyzer(query)) if analyzer is not None else set()
    return [SearchHit(i, s, found[i][0], found[i][1], sig, _highlights(analyzer, found[i][0], terms))
            for i, s, sig in list(zip(ids, scores, signals))[:k]]


def _highlights(analyzer, text: str, terms: set[str]) -> list[tuple[int, int]]:
    if not terms or analyzer is None:
        return []
    spans = []
    for match in _WORD.finditer(text):
        analysed = analyzer(match.group())
        if analysed and analysed[0] in terms:
            spans.append((match.start(), match.end()))
    return spans


class CollectionReadOnly(FlagstoneError):
    """The collection cannot be written (a sharded collection served by Ray shard actors)."""


class Collection:
    def __init__(self, name: str, folder: Path, embedder, cache, settings: dict) -> None:
        self.name = name
        self.folder = folder
        self.embedder = embedder
        self.cache = cache
        self.settings = settings
        self.store = DocumentStore(folder, checkpoint_every=settings.get("checkpoint_every", 1000))
        self._lock = ReadWriteLock()
        self._retriever = None
        self._closed = False  # set under the write lock: a write that gets the lock after it is refused

    @property
    def index_kind(self) -> str:
        return self.settings["index"]

    def count(self) -> int:
        return len(self.store)

    def describe(self) -> dict:
        return {"name": self.name, "documents": len(self.store), "index": self.index_kind,
                "model": self.embedder.name, "modes": list(self._modes()),
                "description": self.settings.get("description", "")}

    def _modes(self) -> tuple[str, ...]:
        return (*self.embedder.available_outputs, "bm25", "hybrid")

    def add(self, documents: Sequence[Document], *, overwrite: bool) -> int:
        """Embed (into the cache) first, then log: a write is acknowledged only once it is searchable."""
        if documents:
            self._embed([d.text for d in documents])
        with self._lock.write():
            self._check_open()
            written = self.store.upsert(documents, overwrite=overwrite)
            if self._retriever is not None:
                latest = {d.id: d for d in documents}  # the last of repeated ids wins, as in the store
                with self._resync_on_error():
                    replaced = [i for i in latest if i in self._retriever]
                    if replaced:
                        self._retriever.remove(replaced)
                    self._retriever.add(list(latest), [d.text for d in latest.values()],
                                        [d.metadata for d in latest.values()], show_progress=False)
            return written

    def _check_open(self) -> None:
        """A write that started before the collection was deleted (or the service stopped) finds it closed:
        404 (its name is gone), not the store's error about a closed file."""
        if self._closed:
            raise CollectionNotFound(f"collection {self.name!r} was deleted (or the service stopped) while the "
                                     f"request was running")

    @contextmanager
    def _resync_on_error(self) -> Iterator[None]:
        """The store is the truth: if applying a logged write to the retriever fails, drop the retriever so
        the next search builds it again from the store, instead of serving an index that disagrees."""
        try:
            yield
        except BaseException:
            self._retriever = None
            raise

    def _embed(self, texts: list[str]) -> None:
        outputs = {o: True for o in self.embedder.available_outputs}
        self.cache.encode(self.embedder, texts, is_query=False, show_progress=False, **outputs)

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        with self._lock.write():
            self._check_open()
            deleted = self.store.delete(ids, missing_ok=missing_ok)
            if self._retriever is not None:
                present = [i for i in dict.fromkeys(ids) if i in self._retriever]
                if len(present) == len(self._retriever):
                    self._retriever = None  # an empty collection: built again on the next write and search
                elif present:
                    with self._resync_on_error():
                        self._retriever.remove(present)
            return deleted

    def get(self, doc_id: str) -> Document:
        doc = self.store.documents.get(doc_id)
        if doc is None:
            raise IdError(f"no document {doc_id!r} in collection {self.name!r}")
        return doc

    def _built(self) -> None:
        """Build the retriever from the store on first use (and after the collection was emptied)."""
        from flagstone.retrieval.retriever import Retriever

        if self._retriever is not None:  # the common case, without waiting for the write lock
            return
        with self._lock.write():
            _, docs = self.store.snapshot()
            if self._retriever is None and docs:
                retriever = self._saved_retriever(docs)
                if retriever is None:
                    retriever = Retriever(self.embedder, cache=self.cache, dense_index=self.index_kind)
                    retriever.add([d.id for d in docs], [d.text for d in docs], [d.metadata for d in docs],
                                  show_progress=False)
                self._retriever = retriever

    def _saved_retriever(self, docs: list[Document]):
        """The retriever saved at the last shutdown, if it holds exactly the store's documents (else None)."""
        from flagstone.retrieval.retriever import Retriever

        folder = self.folder / RETRIEVER
        if not (folder / "retriever.json").is_file():
            return None
        try:
            retriever = Retriever.load(folder, embedder=self.embedder, cache=self.cache)
        except FlagstoneError as exc:  # the store is the truth: build again from it, and say why
            _log.warning("collection %r: saved retriever not used (%s); building it from the documents",
                         self.name, exc)
            return None
        same = retriever.ids == [d.id for d in docs] and all(
            retriever.text(d.id) == d.text and retriever.metadata(d.id) == d.metadata for d in docs)
        if not same:  # writes after the last clean shutdown (a crash, or a kill)
            _log.info("collection %r: saved retriever is older than the documents; building it again", self.name)
            return None
        return retriever

    def retriever(self):
        """The retriever over the current documents and those documents by id (None, {} when empty)."""
        self._built()
        with self._lock.read():
            _, docs = self.store.snapshot()
            return self._retriever, {d.id: d for d in docs}

    def search(self, query: str, *, mode: str = "hybrid", k: int = 10, where: Mapping | None = None,
               reranker=None, rerank_depth: int = 50) -> list[SearchHit]:
        if mode not in self._modes():
            raise InvalidTextError(f"mode {mode!r} is not available; this collection has {', '.join(self._modes())}")
        where = check_filter(where)
        depth = max(k, rerank_depth if reranker is not None else k)
        self._built()
        with self._lock.read():  # a write in the middle of a search would change the indexes under it
            retriever = self._retriever
            if retriever is None:
                return []
            allow = None
            if where:  # the filter is applied inside each index's search, not after it
                allow = [i for i in retriever.ids if matches(retriever.metadata(i), where)]
                if not allow:
                    return []
            hits = retriever.search([query], mode=mode, k=depth, allow=allow)
            found = {i: (retriever.text(i), retriever.metadata(i)) for i in hits.ids[0]}
        return search_hits(retriever.bm25, query, hits, found, k, reranker)

    def close(self, *, save: bool = True) -> None:
        """Close the store; with ``save``, keep the retriever on disk so the next start loads it instead of
        adding every document again (it is used only if it still matches the store)."""
        with self._lock.write():
            try:
                if save and self._retriever is not None:
                    self._retriever.save(self.folder / RETRIEVER, overwrite=True)
            except (OSError, ValueError, FlagstoneError) as exc:
                # the saved retriever only saves time at the next start (the store is the truth); failing to
                # write it (documents stored before metadata was checked, say) must not leave the store open
                _log.warning("collection %r: retriever not saved (%s: %s); the next start builds it from the "
                             "documents", self.name, type(exc).__name__, exc)
            finally:
                self._closed = True
                self.store.close()


class CollectionManager:
    """All collections under one folder (one sub-folder each), sharing the service's embedder and cache."""

    def __init__(self, root: str | Path, embedder, cache) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.cache = cache
        self._lock = threading.Lock()
        self._collections: dict[str, Collection] = {}
        for folder in sorted(p for p in self.root.iterdir() if (p / SETTINGS).is_file()):
            try:
                settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
            except ValueError:
                raise DataError(f"{folder / SETTINGS}: damaged collection settings") from None
            self._collections[folder.name] = Collection(folder.name, folder, embedder, cache, settings)

    def count(self) -> int:
        """How many collections, without the lock (len of a dict is atomic): /health must not wait for a
        create or delete holding it."""
        return len(self._collections)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    def get(self, name: str) -> Collection:
        with self._lock:
            collection = self._collections.get(name)
        if collection is None:
            raise CollectionNotFound(f"no collection named {name!r}")
        return collection

    def create(self, name: str, *, index: str = "flat", description: str = "") -> Collection:
        if not NAME.fullmatch(name or ""):
            raise InvalidTextError("a collection name is 1-64 letters, digits, '_', '.' or '-', starting with a "
                                   "letter or digit")
        if index not in INDEX_KINDS:
            raise InvalidTextError(f"index must be one of {', '.join(INDEX_KINDS)}")
        with self._lock:
            if name in self._collections:
                raise CollectionExists(f"collection {name!r} already exists")
            folder = self.root / name
            settings = {"format": 1, "index": index, "description": description, "model": self.embedder.name}
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(folder / SETTINGS) as f:
                json.dump(settings, f)
            collection = Collection(name, folder, self.embedder, self.cache, settings)
            self._collections[name] = collection
            return collection

    def replace(self, name: str, collection) -> None:
        """Serve ``collection`` (a sharded one) under ``name``: an existing collection of that name is closed
        first (its documents stay on disk); a new name is added."""
        if not NAME.fullmatch(name or ""):
            raise InvalidTextError(f"collection name {name!r}: 1-64 letters, digits, '_', '.' or '-', starting "
                                   f"with a letter or digit")
        with self._lock:
            old = self._collections.get(name)
            if old is not None:
                old.close()
            self._collections[name] = collection

    def delete(self, name: str) -> None:
        with self._lock:
            current = self._collections.get(name)
            if current is not None and not isinstance(current, Collection):
                raise CollectionReadOnly(f"collection {name!r} is a sharded collection served from its folder; "
                                         f"stop the service to remove it")
            collection = self._collections.pop(name, None)
            if collection is None:
                raise CollectionNotFound(f"no collection named {name!r}")
            collection.close(save=False)
            # remove the settings first: a crash mid-delete leaves a folder that is no longer a collection
            (collection.folder / SETTINGS).unlink(missing_ok=True)
            shutil.rmtree(collection.folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.close()
