"""Reading and writing the MIND news-recommendation format (``news.tsv`` and ``behaviors.tsv``).

``news.tsv``: one news item a line, 8 tab-separated fields, no header::

    N55528  lifestyle  lifestyleroyals  <title>  <abstract>  <url>  <title entities JSON>  <abstract entities JSON>

``behaviors.tsv``: one impression a line, 5 tab-separated fields, no header::

    1  U13740  11/11/2019 9:05:58 AM  N55189 N42782 ...  N55689-1 N35729-0

The history is the user's earlier clicks, oldest first (it may be empty); each impression entry is
``<news id>-<1 clicked | 0 not clicked>``. MIND-large's test split has no labels (``N55689 N35729``): such a
split is read with ``labels=None`` and cannot be scored.

Every mistake in a file is a :class:`~flagstone.errors.DataError` of one line naming the file and line.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flagstone._io import atomic_write, require_file
from flagstone.errors import DataError

NEWS_FILE = "news.tsv"
BEHAVIORS_FILE = "behaviors.tsv"
NEWS_FIELDS = ("news id", "category", "subcategory", "title", "abstract", "url", "title entities",
               "abstract entities")
BEHAVIOR_FIELDS = ("impression id", "user id", "time", "history", "impressions")
# MIND writes times as 11/11/2019 9:05:58 AM (month/day/year, 12-hour clock)
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


@dataclass(frozen=True)
class News:
    """One line of news.tsv. Entities are kept as the JSON text MIND stores (checked to be a JSON list), so a
    file is written back exactly as it was read."""

    news_id: str
    category: str
    subcategory: str
    title: str
    abstract: str = ""
    url: str = ""
    title_entities: str = "[]"
    abstract_entities: str = "[]"


@dataclass(frozen=True)
class Impression:
    """One line of behaviors.tsv: a user shown ``candidates`` at ``time`` after clicking ``history``.

    ``labels[i]`` is 1 when ``candidates[i]`` was clicked; None for an unlabelled (test) impression.
    """

    impression_id: str
    user_id: str
    time: datetime
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    labels: tuple[int, ...] | None

    @property
    def clicked(self) -> tuple[str, ...]:
        if self.labels is None:
            return ()
        return tuple(c for c, y in zip(self.candidates, self.labels) if y == 1)


@dataclass
class MindSplit:
    """One MIND folder (e.g. MINDsmall_train): its news by id and its impressions in file order."""

    news: dict[str, News]
    impressions: list[Impression]
    path: Path | None = None

    @property
    def labelled(self) -> bool:
        return all(imp.labels is not None for imp in self.impressions)

    def describe(self) -> str:
        clicks = sum(len(imp.clicked) for imp in self.impressions)
        shown = sum(len(imp.candidates) for imp in self.impressions)
        users = len({imp.user_id for imp in self.impressions})
        return (f"{len(self.news)} news, {len(self.impressions)} impressions of {users} users, "
                f"{shown} candidates shown, {clicks} clicked")

    def head(self, n: int) -> MindSplit:
        """The first ``n`` impressions (news kept whole)."""
        return MindSplit(self.news, self.impressions[:n], self.path)


def format_time(time: datetime) -> str:
    """MIND's time format, without leading zeros on month, day and hour (as the real files have them)."""
    hour = time.hour % 12 or 12
    return (f"{time.month}/{time.day}/{time.year} {hour}:{time.minute:02d}:{time.second:02d} "
            f"{'AM' if time.hour < 12 else 'PM'}")


def _lines(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of every non-empty line; a line ending (\\r\\n too) is not a field."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{number}: not UTF-8 text") from None
            if line.strip():
                yield number, line.split("\t")


def _check_entities(text: str, where: str, field: str) -> str:
    if text == "":
        return "[]"  # MIND leaves the field empty for some items: the same as no entities
    try:
        value = json.loads(text)
    except ValueError:
        raise DataError(f"{where}: {field} is not JSON (expected a list such as [] or [{{\"Label\": ...}}])") from None
    if not isinstance(value, list):
        raise DataError(f"{where}: {field} must be a JSON list, got {type(value).__name__}")
    return text


def read_news(path: str | os.PathLike[str]) -> dict[str, News]:
    """Every item of a news.tsv by id. Ids must be unique and titles non-empty."""
    file = require_file(path, "news file")
    news: dict[str, News] = {}
    for number, fields in _lines(file, "news file"):
        where = f"{file}:{number}"
        if len(fields) != len(NEWS_FIELDS):
            raise DataError(f"{where}: expected {len(NEWS_FIELDS)} tab-separated fields "
                            f"({', '.join(NEWS_FIELDS)}), found {len(fields)}")
        news_id, category, subcategory, title, abstract, url, title_ents, abstract_ents = fields
        if not news_id or any(c.isspace() for c in news_id) or "-" in news_id:
            raise DataError(f"{where}: news id {news_id!r} must be non-empty, without spaces or '-'")
        if news_id in news:
            raise DataError(f"{where}: news id {news_id} appears twice")
        if not title.strip():
            raise DataError(f"{where}: news {news_id} has an empty title")
        news[news_id] = News(news_id, category, subcategory, title, abstract, url,
                             _check_entities(title_ents, where, "title entities"),
                             _check_entities(abstract_ents, where, "abstract entities"))
    if not news:
        raise DataError(f"{file}: no news (the file is empty)")
    return news


def _parse_impressions(text: str, where: str) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    entries = text.split()
    if not entries:
        raise DataError(f"{where}: the impression list is empty")
    ids, labels = [], []
    for entry in entries:
        news_id, dash, label = entry.rpartition("-")
        if not dash:
            ids.append(entry)
            labels.append(None)
            continue
        if label not in ("0", "1") or not news_id:
            raise DataError(f"{where}: impression entry {entry!r} must be NEWSID-1 (clicked) or NEWSID-0 (not)")
        ids.append(news_id)
        labels.append(int(label))
    if all(label is None for label in labels):
        return tuple(ids), None
    if any(label is None for label in labels):
        raise DataError(f"{where}: some impression entries have a -0/-1 label and some do not")
    return tuple(ids), tuple(labels)  # type: ignore[arg-type]


def read_behaviors(path: str | os.PathLike[str], news: dict[str, News] | None = None) -> list[Impression]:
    """Every impression of a behaviors.tsv, in file order. With ``news``, every history and candidate id must
    be one of its items."""
    file = require_file(path, "behaviors file")
    impressions: list[Impression] = []
    seen: set[str] = set()
    for number, fields in _lines(file, "behaviors file"):
        where = f"{file}:{number}"
        if len(fields) != len(BEHAVIOR_FIELDS):
            raise DataError(f"{where}: expected {len(BEHAVIOR_FIELDS)} tab-separated fields "
                            f"({', '.join(BEHAVIOR_FIELDS)}), found {len(fields)}")
        impression_id, user_id, time_text, history_text, impressions_text = fields
        if not impression_id or impression_id in seen:
            raise DataError(f"{where}: impression id {impression_id!r} is empty or appears twice")
        seen.add(impression_id)
        if not user_id.strip():
            raise DataError(f"{where}: empty user id")
        try:
            time = datetime.strptime(time_text.strip(), TIME_FORMAT)
        except ValueError:
            raise DataError(f"{where}: time {time_text!r} is not in MIND's format, e.g. 11/11/2019 9:05:58 AM") \
                from None
        history = tuple(history_text.split())
        candidates, labels = _parse_impressions(impressions_text, where)
        if news is not None:
            for news_id in history + candidates:
                if news_id not in news:
                    raise DataError(f"{where}: news id {news_id} is not in {NEWS_FILE}")
        impressions.append(Impression(impression_id, user_id, time, history, candidates, labels))
    if not impressions:
        raise DataError(f"{file}: no impressions (the file is empty)")
    return impressions


def load_mind(folder: str | os.PathLike[str]) -> MindSplit:
    """A MIND folder holding news.tsv and behaviors.tsv (MINDsmall_train, MINDlarge_dev, or a synthetic one)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a MIND folder with {NEWS_FILE} and {BEHAVIORS_FILE})")
    for name in (NEWS_FILE, BEHAVIORS_FILE):
        if not (root / name).is_file():
            raise DataError(f"{root}: no {name} (a MIND folder holds {NEWS_FILE} and {BEHAVIORS_FILE})")
    news = read_news(root / NEWS_FILE)
    return MindSplit(news, read_behaviors(root / BEHAVIORS_FILE, news), root)


def _clean(text: str, what: str, news_id: str) -> str:
    if "\t" in text or "\n" in text or "\r" in text:
        raise DataError(f"news {news_id}: its {what} holds a tab or a line break, which news.tsv cannot store")
    return text


def write_news(news: dict[str, News] | list[News], path: str | os.PathLike[str]) -> None:
    """Write a news.tsv (atomically)."""
    items = list(news.values()) if isinstance(news, dict) else list(news)
    with atomic_write(path) as handle:
        for item in items:
            fields = (item.news_id, item.category, item.subcategory, item.title, item.abstract, item.url,
                      item.title_entities, item.abstract_entities)
            handle.write("\t".join(_clean(f, name, item.news_id) for f, name in zip(fields, NEWS_FIELDS)) + "\n")


def write_behaviors(impressions: list[Impression], path: str | os.PathLike[str]) -> None:
    """Write a behaviors.tsv (atomically)."""
    with atomic_write(path) as handle:
        for imp in impressions:
            if imp.labels is None:
                shown = " ".join(imp.candidates)
            else:
                if len(imp.labels) != len(imp.candidates):
                    raise DataError(f"impression {imp.impression_id}: {len(imp.candidates)} candidates but "
                                    f"{len(imp.labels)} labels")
                shown = " ".join(f"{c}-{y}" for c, y in zip(imp.candidates, imp.labels))
            handle.write(f"{imp.impression_id}\t{imp.user_id}\t{format_time(imp.time)}\t"
                         f"{' '.join(imp.history)}\t{shown}\n")


def write_mind(split: MindSplit, folder: str | os.PathLike[str]) -> Path:
    """Write news.tsv and behaviors.tsv into ``folder`` (created if needed; each file written atomically)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    write_news(split.news, root / NEWS_FILE)
    write_behaviors(split.impressions, root / BEHAVIORS_FILE)
    return root
