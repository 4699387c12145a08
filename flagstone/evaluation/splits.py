"""Validation splits carved from a BEIR folder's training queries, saved to disk with the seed that made them.

:func:`carve_split` moves a seeded share of one split's queries (say SciFact's train) into a new split (``dev``)
and writes a self-contained BEIR folder elsewhere: ``corpus.jsonl`` and ``queries.jsonl`` copied,
``qrels/<name>.tsv`` with the carved queries, ``qrels/<source>.tsv`` with the rest (train on these, tune on
``<name>``), and ``split.json``, the manifest: seed, source folder and split, the rule, sizes, and SHA-256 hashes
of the query ids on each side and of every file. The source folder is only read. Which queries are carved depends
on the seed and the query ids alone: queries are ordered by SHA-256 of ``"<seed>:<query id>"`` (no random number
generator whose stream could change between library versions) and the first ``n`` are carved.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flagstone._io import atomic_folder, atomic_write, read_format_json
from flagstone.errors import DataError, FlagstoneError
from flagstone.evaluation.beir import check_beir_folder, load_qrels

FORMAT = "flagstone-split"
VERSION = 1
MANIFEST = "split.json"


class SplitError(FlagstoneError):
    """A split that cannot be carved as asked (a bad share, a name already taken, too few queries)."""


def ids_hash(query_ids: Iterable[str]) -> str:
    """SHA-256 of the sorted query ids, one per line: the same set gives the same hash, whatever the order."""
    return hashlib.sha256("\n".join(sorted(query_ids)).encode("utf-8")).hexdigest()


def file_hash(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def carved_count(total: int, *, fraction: float | None = None, count: int | None = None) -> int:
    """How many of ``total`` queries are carved: ``count``, or ``ceil(fraction * total)``; at least one query must
    stay on each side."""
    if (fraction is None) == (count is None):
        raise SplitError("give a fraction or a count of queries to carve, not both and not neither")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise SplitError(f"the fraction to carve must be between 0 and 1 (exclusive), got {fraction}")
        count = math.ceil(fraction * total)
    assert count is not None
    if count < 1 or count >= total:
        raise SplitError(f"cannot carve {count} of {total} queries: at least one must go to each side")
    return count


def choose_queries(query_ids: Iterable[str], n: int, seed: int) -> list[str]:
    """The ``n`` query ids carved under ``seed``: the first by SHA-256 of ``"<seed>:<id>"`` (ties, impossible in
    practice, broken by id), returned in the order they were given."""
    ids = list(query_ids)
    if len(set(ids)) != len(ids):
        raise SplitError("query ids must be unique")
    ranked = sorted(ids, key=lambda q: (hashlib.sha256(f"{seed}:{q}".encode("utf-8")).digest(), q))
    chosen = set(ranked[:n])
    return [q for q in ids if q in chosen]


def write_qrels(path: str | os.PathLike[str], qrels: Mapping[str, Mapping[str, int]]) -> None:
    """BEIR qrels TSV (``query-id``, ``corpus-id``, ``score`` with a header), written atomically."""
    with atomic_write(path) as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in qrels.items():
            for doc_id, score in judged.items():
                handle.write(f"{qid}\t{doc_id}\t{int(score)}\n")


def carve_split(
    folder: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    seed: int,
    fraction: float | None = None,
    count: int | None = None,
    source_split: str = "train",
    name: str = "dev",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Carve ``fraction`` (``ceil(fraction * queries)``) or ``count`` of ``source_split``'s judged queries of the
    BEIR folder ``folder`` into a split called ``name``, and write the result as a BEIR folder at ``output``
    (see the module's docstring); returns the manifest. ``output`` must not exist, or be a folder Flagstone wrote
    and ``overwrite`` be true; it may not be ``folder`` itself or inside it."""
    source = Path(folder)
    qrels_file = check_beir_folder(source, source_split)
    target = Path(output)
    if not name or name != Path(name).name or name == source_split:
        raise SplitError(f"the carved split needs a plain name other than {source_split!r}, got {name!r}")
    if target.resolve() == source.resolve() or source.resolve() in target.resolve().parents:
        raise SplitError(f"write the carved split outside the source folder {source} (the source is only read)")
    qrels = load_qrels(qrels_file)
    n = carved_count(len(qrels), fraction=fraction, count=count)
    carved_ids = choose_queries(qrels, n, seed)
    carved = {q: qrels[q] for q in carved_ids}
    rest = {q: judged for q, judged in qrels.items() if q not in carved}
    with atomic_folder(target, overwrite=overwrite) as staging:
        for file in ("corpus.jsonl", "queries.jsonl"):
            shutil.copyfile(source / file, staging / file)
        (staging / "qrels").mkdir()
        write_qrels(staging / "qrels" / f"{name}.tsv", carved)
        write_qrels(staging / "qrels" / f"{source_split}.tsv", rest)
        manifest = {
            "format": FORMAT, "version": VERSION,
            "seed": seed, "rule": "the first n queries by sha256('<seed>:<query id>')",
            "fraction": fraction, "count": count,
            "source": {"folder": str(source.resolve()), "split": source_split, "qrels_sha256": file_hash(qrels_file),
                       "queries": len(qrels)},
            "splits": {
                name: {"queries": len(carved), "judgements": sum(len(j) for j in carved.values()),
                       "query_ids_sha256": ids_hash(carved)},
                source_split: {"queries": len(rest), "judgements": sum(len(j) for j in rest.values()),
                               "query_ids_sha256": ids_hash(rest)},
            },
            "carved": name,
            "files_sha256": {path: file_hash(staging / path) for path in
                             ("corpus.jsonl", "queries.jsonl", f"qrels/{name}.tsv", f"qrels/{source_split}.tsv")},
        }
        with atomic_write(staging / MANIFEST) as handle:
            json.dump(manifest, handle, indent=2)
    return manifest


def read_split_manifest(folder: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """The manifest of a folder :func:`carve_split` wrote; with ``verify``, every file's SHA-256 is checked
    (a :class:`~flagstone.errors.DataError` names the first that changed)."""
    root = Path(folder)
    file = root / MANIFEST
    if not file.is_file():
        raise DataError(f"{root} has no {MANIFEST}: not a split written by carve_split")
    manifest = read_format_json(file, format_name=FORMAT, version=VERSION, what="a carved split folder",
                                kind="split")
    if verify:
        for path, expected in manifest["files_sha256"].items():
            if not (root / path).is_file() or file_hash(root / path) != expected:
                raise DataError(f"{root / path} does not match the split's manifest (changed since it was carved)")
    return manifest
