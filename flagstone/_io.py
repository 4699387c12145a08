"""Small file helpers shared by every layer: atomic file and folder writes, JSONL reading with line numbers."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from flagstone.errors import DataError


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place on success.

    A crash or kill at any point leaves either the old file or the new one, never a partial one; the
    temporary file of a killed write (its name holds the writer's pid) is removed by the next write of ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for orphan in target.parent.glob(f".{target.name}{_STAGING}*"):
        pid = orphan.name.rsplit(_STAGING, 1)[1].split("-", 1)[0]
        if orphan.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            orphan.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{_STAGING}{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


# Every folder Flagstone writes as a whole carries this file, listing what it wrote: ``--overwrite`` may only
# replace such a folder, and only when nothing else was put there since.
OUTPUT_MARKER = ".flagstone-output.json"
# A staging folder carries this (with its writer's pid) until it is renamed into place, so that the next
# write to the same path can tell a killed run's leftovers from a running one's and remove them.
STAGING_MARKER = ".flagstone-staging.json"
_STAGING = ".flagstone-tmp-"
_OLD = ".flagstone-old-"



@dataclass(frozen=True)
class LegacyLayout:
    """How a folder written before output markers existed is recognised: ``signature`` is present and
    every entry is one of ``entries``."""

    signature: str
    entries: frozenset[str]

    def matches(self, entries: set[str]) -> bool:
        return self.signature in entries and entries <= self.entries


# What a Hugging Face / sentence-transformers save writes: a folder holding only these names (and no marker,
# e.g. from an older Flagstone) counts as a model Flagstone wrote.
MODEL_LAYOUT = LegacyLayout("config.json", frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "added_tokens.json", "sentencepiece.bpe.model", "tokenizer.model",
    "chat_template.jinja", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "1_Pooling", "2_Normalize", "sparse_linear.pt", "colbert_linear.pt",
}))


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is a file (``path`` could then never be created)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_folder(path: str | os.PathLike[str], *, overwrite: bool,
                        legacy: LegacyLayout | None = None) -> Path:
    """Before any work: may a whole-folder output be written at ``path``? Returns it as a Path.

    A missing path or an empty folder is fine. A non-empty folder needs ``overwrite``, and even then only a
    folder that Flagstone wrote (it has :data:`OUTPUT_MARKER`, or, from older versions, matches ``legacy``)
    with nothing added since is replaced; anything else is a :class:`DataError`.
    """
    target = Path(path)
    blocker = file_in_the_way(target)
    if blocker is not None:
        raise DataError(f"output {target}: {blocker} is a file, not a folder")
    if not target.exists():
        return target
    if not target.is_dir():
        raise DataError(f"output {target} is a file; give a folder")
    entries = {entry.name for entry in target.iterdir()} - {STAGING_MARKER}
    if not entries:
        return target
    if not overwrite:
        raise DataError(f"output {target} already exists and is not empty; pass --overwrite (overwrite=True) "
                        f"to replace what Flagstone wrote there")
    written = _entries_written(target)
    if written is None:
        if legacy is not None and legacy.matches(entries):
            return target
        raise DataError(f"output {target} was not written by Flagstone; refusing to replace it, even with "
                        f"--overwrite (choose another folder)")
    foreign = sorted(entries - written - {OUTPUT_MARKER})
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DataError(f"output {target} holds {len(foreign)} file(s) Flagstone did not write ({shown}); "
                        f"move them away or choose another folder")
    return target


def _entries_written(folder: Path) -> set[str] | None:
    """The names the output marker lists, or None when the folder has no readable marker."""
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entries = marker.get("entries") if isinstance(marker, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    return set(entries)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _writer_alive(folder: Path) -> bool:
    """Whether the process that created this staging folder may still be writing it."""
    try:
        owner = json.loads((folder / STAGING_MARKER).read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return True  # not provably ours and dead: leave it alone
    return host != socket.gethostname() or _pid_alive(pid)


def remove_orphans(path: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed writes of ``path`` left beside it; returns what was removed.

    Staging folders are removed when their marker names a process of this host that has ended. A previous
    version moved aside by a swap that was killed half-way is moved back when ``path`` is missing (it is then
    the only copy), and removed otherwise.
    """
    target = Path(path)
    if not target.parent.is_dir():
        return []
    removed = []
    for sibling in sorted(target.parent.glob(f".{target.name}{_STAGING}*")):
        if sibling.is_dir() and (sibling / STAGING_MARKER).is_file() and not _writer_alive(sibling):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    for sibling in sorted(target.parent.glob(f".{target.name}{_OLD}*")):
        pid = sibling.name.rsplit(_OLD, 1)[1].split("-", 1)[0]
        if not sibling.is_dir() or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if not target.exists():
            os.replace(sibling, target)
        else:
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, overwrite: bool = False,
                  legacy: LegacyLayout | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it replaces ``path`` as a whole.

    ``path`` must pass :func:`check_output_folder` (checked again just before the swap). Readers see the old
    folder or the new one, never a half-written one; on an error the staging folder is removed and ``path``
    is left as it was. Leftovers of killed earlier writes to ``path`` are removed first.
    """
    target = Path(path)
    check_output_folder(target, overwrite=overwrite, legacy=legacy)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{_STAGING}", dir=target.parent))
    os.chmod(staging, 0o755)
    (staging / STAGING_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    old: Path | None = None
    try:
        yield staging
        entries = sorted(entry.name for entry in staging.iterdir() if entry.name != STAGING_MARKER)
        (staging / OUTPUT_MARKER).write_text(json.dumps({"format": "flagstone-output", "version": 1,
                                                         "entries": entries}, indent=1))
        check_output_folder(target, overwrite=overwrite, legacy=legacy)
        if target.exists():
            old = target.with_name(f".{target.name}{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old, target)
        raise
    (target / STAGING_MARKER).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise a DataError naming it when it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    if not p.is_file():
        raise DataError(f"{what} is not a file: {p}")
    return p


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; malformed lines raise DataError with file:line."""
    p = require_file(path, "JSONL file")
    with p.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{p}:{line_no}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{line_no}: malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """A whole UTF-8 text file, with DataError for a missing file or another encoding."""
    p = require_file(path, what)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 (byte {exc.start})") from None


def read_format_json(file: Path, *, format_name: str, version: int, what: str, kind: str,
                     error: type[Exception] = DataError) -> dict[str, Any]:
    """A JSON file that names its ``format`` and ``version`` (index manifests, retriever settings): the parsed
    object, or ``error`` saying the file is unreadable, not ``what``, or of an unsupported ``kind`` version."""
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{file}: missing or unreadable ({exc.__class__.__name__})") from None
    where = file.parent
    if not isinstance(document, dict) or document.get("format") != format_name:
        found = document.get("format") if isinstance(document, dict) else None
        raise error(f"{where} is not {what} (format {found!r})")
    if document.get("version") != version:
        raise error(f"{where}: {kind} format version {document.get('version')} is not supported "
                    f"(this Flagstone reads version {version})")
    return document
