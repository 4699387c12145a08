"""Distributed encoding: a corpus -> Ray Data -> an actor pool holding the embedder -> embedding shards on disk.

The output folder holds ``encoding.json`` (model, settings, shard layout) and one ``shard-NNNNN.npz`` per
``shard_size`` documents, in corpus order: the :meth:`Embeddings.to_arrays` arrays plus ``ids`` (the layout
``flagstone encode`` writes). Each shard is written atomically once all its documents are encoded, so a run
that stops keeps its finished shards and the same call later encodes only the rest (``resume``).
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flagstone._io import _STAGING, OUTPUT_MARKER, _entries_written, atomic_write, check_output_folder
from flagstone.errors import DataError, FlagstoneError
from flagstone.models.embeddings import Embeddings

FORMAT = "flagstone-encoded-corpus"
VERSION = 1
MANIFEST = "encoding.json"
_OUTPUTS = ("dense", "sparse", "colbert")


@dataclass(frozen=True)
class EmbedderSpec:
    """How each worker builds its own :class:`~flagstone.models.embedder.Embedder` (the model is loaded where
    it runs rather than shipped); ``threads`` is torch's intra-op thread count per worker."""

    model: str
    max_length: int | None = None
    batch_size: int = 32
    dtype: str = "float32"
    threads: int = 1
    splade: bool | None = None  # a SPLADE model; None: as the preset says (see Embedder)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.batch_size < 1:
            raise ValueError("threads and batch_size must be at least 1")

    def build(self):
        import torch

        from flagstone.models.embedder import Embedder

        torch.set_num_threads(self.threads)
        return Embedder(self.model, max_length=self.max_length, batch_size=self.batch_size, dtype=self.dtype,
                        show_progress=False, splade=self.splade)

    @classmethod
    def of(cls, embedder, *, threads: int = 1) -> EmbedderSpec:
        """The spec that rebuilds ``embedder`` (same model name or folder, so a preset keeps its pooling and
        instruction; same length limit, batch size and dtype)."""
        return cls(embedder.name, max_length=embedder.settings.max_length, batch_size=embedder.batch_size,
                   dtype=embedder.settings.dtype, threads=threads, splade=embedder.settings.splade)


@dataclass(frozen=True)
class EncodeReport:
    folder: Path
    documents: int
    shards: int
    shards_encoded: int  # this run
    shards_skipped: int  # found finished on disk
    documents_encoded: int  # this run
    seconds: float
    first_block_seconds: float  # until the first block came back: the pool's start-up (model loading) and one block
    first_block_documents: int


def read_corpus(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(ids, texts) of a BEIR folder (its corpus.jsonl), a corpus JSONL file (``_id``, ``title``, ``text``) or
    a Parquet file with those columns (``id`` also accepted); title and text are joined as BEIR joins them."""
    from flagstone.evaluation.beir import load_corpus

    p = Path(path)
    if p.is_dir():
        return load_corpus(p / "corpus.jsonl")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable Parquet file ({exc})") from None
        columns = set(table.column_names)
        id_column = "_id" if "_id" in columns else "id"
        if id_column not in columns or "text" not in columns:
            raise DataError(f"{p}: a Parquet corpus needs columns _id (or id) and text; it has {sorted(columns)}")
        ids = [str(i) for i in table.column(id_column).to_pylist()]
        texts = [t or "" for t in table.column("text").to_pylist()]
        if "title" in columns:
            texts = [f"{title or ''} {text}".strip() for title, text in zip(table.column("title").to_pylist(), texts)]
        if len(set(ids)) != len(ids):
            raise DataError(f"{p}: document ids are not unique")
        return ids, texts
    return load_corpus(p)


class EncodeWorker:
    """A Ray Data actor: holds one embedder and turns a block of (row, text) into one npz payload."""

    def __init__(self, spec: EmbedderSpec, outputs: tuple[str, ...]) -> None:
        self.embedder = spec.build()
        self.outputs = outputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        emb = self.embedder.encode(texts, is_query=False, show_progress=False,
                                   **{o: o in self.outputs for o in _OUTPUTS})
        buffer = io.BytesIO()
        np.savez(buffer, rows=np.asarray(batch["row"], dtype=np.int64), **emb.to_arrays())
        return {"payload": np.array([buffer.getvalue()], dtype=object)}


def _settings(spec: EmbedderSpec, outputs: tuple[str, ...], ids: Sequence[str], shard_size: int) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()
    return {"format": FORMAT, "version": VERSION, "model": {**asdict(spec), "threads": None},
            "outputs": list(outputs), "documents": len(ids), "shard_size": shard_size,
            "shards": -(-len(ids) // shard_size), "ids_sha256": digest}


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard-{shard:05d}.npz"


def encode_corpus(ids: Sequence[str], texts: Sequence[str], folder: str | os.PathLike[str], spec: EmbedderSpec, *,
                  workers: int = 2, outputs: Sequence[str] = ("dense",), shard_size: int = 10_000,
                  block_size: int = 256, overwrite: bool = False, show_progress: bool = True) -> EncodeReport:
    """Encode ``texts`` on a pool of ``workers`` Ray actors (each holding an embedder built from ``spec``) into
    shards of ``shard_size`` documents under ``folder``. Ray must be connected (see :func:`.cluster.connect`).

    A folder written by an earlier call with the same corpus, model and layout is resumed: its finished shards
    are kept. Any other non-empty folder needs ``overwrite`` (and is replaced only if Flagstone wrote it).
    Workers write nothing: the driver writes each shard when its last block arrives, so on a multi-node cluster
    the folder needs to be on the driver's disk only.
    """
    from flagstone.distributed.cluster import require_ray

    ray = require_ray()
    outputs = tuple(outputs)
    if not outputs or set(outputs) - set(_OUTPUTS):
        raise ValueError(f"outputs must be some of {_OUTPUTS}, got {outputs}")
    if len(ids) != len(texts) or not ids:
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts (and at least one is needed)")
    if workers < 1 or shard_size < 1 or block_size < 1:
        raise ValueError("workers, shard_size and block_size must be at least 1")
    root = Path(folder)
    settings = _settings(spec, outputs, ids, shard_size)
    manifest = root / MANIFEST
    resume = manifest.is_file() and _same_settings(manifest, settings)
    if resume:
        _check_resumable(root)
    if not resume:
        if manifest.is_file() and not overwrite:
            raise DataError(f"{root} holds an encoding with other settings (corpus, model or shard size); pass "
                            f"overwrite=True (--overwrite) to replace it")
        check_output_folder(root, overwrite=overwrite)
        if root.exists():
            for old in root.glob("shard-*.npz"):
                old.unlink()
        root.mkdir(parents=True, exist_ok=True)
        with atomic_write(manifest) as handle:
            json.dump(settings, handle, indent=2)
        # every shard this run may write is listed up front, so a later overwrite recognises them all
        with atomic_write(root / OUTPUT_MARKER) as handle:
            json.dump({"format": "flagstone-output", "version": 1, "entries": [MANIFEST] + [
                shard_path(root, s).name for s in range(settings["shards"])]}, handle, indent=1)
    n_shards = settings["shards"]
    pending = [s for s in range(n_shards) if not shard_path(root, s).is_file()]
    start = time.perf_counter()
    first: tuple[float, int] = (0.0, 0)
    if pending:
        first = _encode_pending(ray, ids, texts, root, spec, outputs, pending, shard_size, workers, block_size,
                                show_progress)
    encoded = sum(min((s + 1) * shard_size, len(ids)) - s * shard_size for s in pending)
    return EncodeReport(root, len(ids), n_shards, len(pending), n_shards - len(pending), encoded,
                        time.perf_counter() - start, first[0] - start if pending else 0.0, first[1])


def _check_resumable(root: Path) -> None:
    """Resuming writes shard files into ``root``: only into a folder Flagstone wrote, holding nothing else (an
    encoding.json copied without the output marker could sit beside the user's own files)."""
    written = _entries_written(root)
    if written is None:
        raise DataError(f"{root} holds an encoding.json but was not written by Flagstone; refusing to write there, "
                        f"even with overwrite (choose another folder)")
    # the temporary file of a killed shard write (".shard-00001.npz.partial<pid>-...") is ours too
    foreign = sorted(e.name for e in root.iterdir() if e.name not in written and e.name != OUTPUT_MARKER
                     and not any(e.name.startswith(f".{w}{_STAGING}") for w in written))
    if foreign:
        raise DataError(f"{root} holds {len(foreign)} file(s) Flagstone did not write ({', '.join(foreign[:3])}); "
                        f"refusing to resume there, even with overwrite (move them away or choose another folder)")


def _same_settings(manifest: Path, settings: dict[str, Any]) -> bool:
    try:
        return json.loads(manifest.read_text(encoding="utf-8")) == settings
    except (OSError, json.JSONDecodeError):
        return False


def _encode_pending(ray, ids, texts, root: Path, spec: EmbedderSpec, outputs: tuple[str, ...], pending: list[int],
                    shard_size: int, workers: int, block_size: int, show_progress: bool) -> tuple[float, int]:
    import pyarrow as pa
    import ray.data
    from tqdm.auto import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, ours, counting documents
    blocks = []
    for shard in pending:
        lo, stop = shard * shard_size, min((shard + 1) * shard_size, len(ids))
        for s in range(lo, stop, block_size):  # a block never straddles two shards
            rows = np.arange(s, min(s + block_size, stop), dtype=np.int64)
            blocks.append(pa.table({"row": rows, "text": [texts[r] for r in rows]}))
    dataset = ray.data.from_arrow(blocks)
    encoded = dataset.map_batches(EncodeWorker, fn_constructor_args=(spec, outputs), batch_size=None,
                                  compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=spec.threads)
    waiting: dict[int, list[tuple[np.ndarray, Embeddings]]] = {s: [] for s in pending}
    remaining = {s: min((s + 1) * shard_size, len(ids)) - s * shard_size for s in pending}
    bar = tqdm(total=sum(remaining.values()), unit="doc", desc="encoding", disable=not show_progress,
               file=sys.stderr)
    first: tuple[float, int] | None = None
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        for payload in batch["payload"]:
            with np.load(io.BytesIO(payload)) as arrays:
                rows = arrays["rows"]
                emb = Embeddings.from_arrays({k: arrays[k] for k in arrays.files if k != "rows"})
            shard = int(rows[0]) // shard_size
            first = first or (time.perf_counter(), len(rows))
            waiting[shard].append((rows, emb))
            remaining[shard] -= len(rows)
            bar.update(len(rows))
            if remaining[shard] == 0:
                _write_shard(root, shard, ids, waiting.pop(shard))
    bar.close()
    unfinished = [s for s, left in remaining.items() if left]
    if unfinished:
        raise FlagstoneError(f"encoding ended with shards {unfinished[:3]} incomplete; run again to resume")
    return first


def _write_shard(root: Path, shard: int, ids: Sequence[str], parts: list[tuple[np.ndarray, Embeddings]]) -> None:
    parts.sort(key=lambda part: int(part[0][0]))
    rows = np.concatenate([p[0] for p in parts])
    emb = Embeddings.concat([p[1] for p in parts])
    with atomic_write(shard_path(root, shard), "wb") as handle:
        np.savez(handle, ids=np.asarray([ids[r] for r in rows]), **emb.to_arrays())


def load_encoded(folder: str | os.PathLike[str], *,
                 rows: tuple[int, int] | None = None) -> tuple[list[str], Embeddings]:
    """(ids, embeddings) stored by :func:`encode_corpus`, all of them or the corpus rows ``[start, stop)``."""
    root = Path(folder)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{root} is not an encoded corpus (no {MANIFEST})")
    settings = json.loads(manifest.read_text(encoding="utf-8"))
    if settings.get("format") != FORMAT:
        raise DataError(f"{manifest}: not a {FORMAT} manifest")
    size, total = settings["shard_size"], settings["documents"]
    start, stop = rows if rows is not None else (0, total)
    if not 0 <= start <= stop <= total:
        raise ValueError(f"rows {start}:{stop} outside the {total} encoded documents")
    ids: list[str] = []
    parts = []
    for shard in range(start // size, -(-stop // size)):
        path = shard_path(root, shard)
        if not path.is_file():
            raise DataError(f"{path} is missing: the encoding is unfinished; run it again to resume")
        with np.load(path) as arrays:
            lo, hi = max(start - shard * size, 0), min(stop - shard * size, size)
            emb = Embeddings.from_arrays({k: arrays[k] for k in arrays.files if k != "ids"})
            ids += [str(i) for i in arrays["ids"][lo:hi]]
            parts.append(emb.take(np.arange(lo, min(hi, len(emb)))))
    return ids, Embeddings.concat(parts)
