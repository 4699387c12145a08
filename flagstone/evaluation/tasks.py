"""Evaluation tasks: what data a task reads and how its main score is computed (MTEB task types).

A task is a :class:`TaskSpec` — a name, a type, files and the columns it reads. The built-in registry
covers the data sets under ``../shared/data``; users add their own by writing the same fields in a JSON
file (``flagstone eval --task-file my_task.json``) or by building a ``TaskSpec`` in Python.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flagstone._io import read_text
from flagstone.errors import DataError
from flagstone.evaluation.tabular import Column, first_row, is_number

TASK_TYPES = ("retrieval", "reranking", "sts", "pair_classification", "classification", "clustering")
MAIN_SCORES = {
    "retrieval": "ndcg_at_10",
    "reranking": "map_at_1000",
    "sts": "cosine_spearman",
    "pair_classification": "max_ap",
    "classification": "accuracy",
    "clustering": "v_measure",
}
# the columns each type reads, and the file splits it needs
_ROLES = {
    "sts": ("sentence1", "sentence2", "score"),
    "pair_classification": ("sentence1", "sentence2", "label"),
    "classification": ("text", "label"),
    "clustering": ("text", "label"),
}
# the numeric column that tells a header row from data when a table's columns are numbered
_NUMERIC_ROLE = {"sts": "score", "pair_classification": "label"}
_SPLITS = {
    "retrieval": ("beir",),
    "reranking": ("beir",),
    "sts": ("test",),
    "pair_classification": ("test",),
    "classification": ("train", "test"),
    "clustering": ("test",),
}


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task.

    ``files`` maps a split to a path (relative paths are under the data root): ``train`` / ``test``
    tables, ``beir`` for a BEIR folder (retrieval, reranking), and for cross-lingual STS an optional
    ``test_sentence2``, a line-aligned file in another language whose ``sentence2`` column replaces the
    first file's. ``columns`` maps roles (``sentence1``, ``sentence2``, ``score``, ``label``, ``text``) to
    header names or 0-based positions. ``header`` says whether tables have a header row; None (the
    default) decides: named columns need a header; with numbered columns the first row is a header only
    when its score (STS) or label (pair classification) cell is not a number. Classification and
    clustering tables with numbered columns must say ``header`` (true or false): no column tells.
    """

    name: str
    type: str
    files: Mapping[str, str]
    columns: Mapping[str, Column] = field(default_factory=dict)
    header: bool | None = None
    languages: tuple[str, ...] = ("en",)
    score_range: tuple[float, float] = (0.0, 5.0)  # STS gold scores
    split: str = "test"  # BEIR qrels split for retrieval / reranking
    candidates: int = 30  # reranking built from BEIR: BM25 top-N (plus the judged documents)
    reference: str = ""  # where the data comes from / what the published number is

    def __post_init__(self) -> None:
        if self.type not in TASK_TYPES:
            raise DataError(f"task {self.name!r}: type {self.type!r} is not one of {', '.join(TASK_TYPES)}")
        missing = [s for s in _SPLITS[self.type] if s not in self.files]
        if missing:
            raise DataError(f"task {self.name!r}: files needs {', '.join(missing)}")
        roles = _ROLES.get(self.type, ())
        absent = [r for r in roles if r not in self.columns]
        if absent:
            raise DataError(f"task {self.name!r}: columns needs {', '.join(absent)}")
        if self.header is not None and not isinstance(self.header, bool):
            raise DataError(f"task {self.name!r}: header must be true or false, got {self.header!r}")
        numbered = bool(roles) and all(isinstance(self.columns[r], int) for r in roles)
        if self.header is None and numbered and self.type not in _NUMERIC_ROLE:
            raise DataError(f"task {self.name!r}: columns are numbered, so say whether the files have a header "
                            "row: \"header\": true or false")

    def has_header(self, path: str | os.PathLike[str]) -> bool:
        """Whether the table at ``path`` starts with a header row (see ``header``)."""
        if self.header is not None:
            return self.header
        if any(isinstance(c, str) for c in self.columns.values()):
            return True
        row = first_row(path)
        position = int(self.columns[_NUMERIC_ROLE[self.type]])  # every column is numbered here
        # a short or empty first row is data; read_columns then reports it with its line number
        return row is not None and position < len(row) and not is_number(row[position])

    @property
    def main_score(self) -> str:
        return MAIN_SCORES[self.type]

    def path(self, split: str, data_root: str | os.PathLike[str] | None) -> Path:
        p = Path(self.files[split]).expanduser()
        if not p.is_absolute() and data_root is not None:
            p = Path(data_root) / p
        return p

    @classmethod
    def from_dict(cls, raw: Mapping[str, object], where: str = "task") -> TaskSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        for key in ("name", "type", "files"):
            if key not in raw:
                raise DataError(f"{where}: missing {key!r}")
        values = dict(raw)
        for key in ("languages", "score_range"):
            if key in values:
                values[key] = tuple(values[key])  # type: ignore[arg-type]
        try:
            return cls(**values)  # type: ignore[arg-type]
        except (TypeError, DataError) as exc:
            raise DataError(f"{where}: {exc}") from None


def load_task_file(path: str | os.PathLike[str]) -> list[TaskSpec]:
    """Tasks from a JSON file: one task object or a list of them (fields as in :class:`TaskSpec`)."""
    try:
        raw = json.loads(read_text(path, "task file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    items = raw if isinstance(raw, list) else [raw]
    specs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: task #{i} is not a JSON object")
        spec = TaskSpec.from_dict(item, f"{path}: task #{i}")
        base = Path(path).resolve().parent  # relative paths in a task file are relative to the file
        files = {k: str(Path(v) if Path(v).is_absolute() else base / v) for k, v in spec.files.items()}
        specs.append(TaskSpec.from_dict({**spec.__dict__, "files": files}, f"{path}: task #{i}"))
    return specs


STSB_LANGUAGES = ("en", "de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
_STSB = "sts/stsb_multi_mt/stsb-{lang}-test.csv"
_STSB_REF = "STS benchmark test (1,379 pairs); machine translations from stsb_multi_mt"


def _stsb(lang: str, lang2: str | None = None) -> TaskSpec:
    files = {"test": _STSB.format(lang=lang)}
    name = "STSBenchmark" if lang == "en" and lang2 is None else f"STSB-{lang}"
    languages: tuple[str, ...] = (lang,)
    if lang2 is not None:
        files["test_sentence2"] = _STSB.format(lang=lang2)
        name, languages = f"STSB-{lang}-{lang2}", (lang, lang2)
    return TaskSpec(name, "sts", files, {"sentence1": 0, "sentence2": 1, "score": 2}, header=False,
                    languages=languages, reference=_STSB_REF)


REGISTRY: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("SciFact", "retrieval", {"beir": "beir/scifact"}, reference="BEIR SciFact test, 300 queries"),
        TaskSpec("SciFactReranking", "reranking", {"beir": "beir/scifact"}, candidates=30,
                 reference="derived: each SciFact test query's BM25 top-30 plus its judged documents"),
        *[_stsb(lang) for lang in STSB_LANGUAGES],
        *[_stsb("en", other) for other in ("de", "es", "fr", "zh")],
        _stsb("zh", "en"),
        TaskSpec("MSRP", "pair_classification", {"test": "pair_classification/msrp/msr-para-test.tsv"},
                 {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
                 reference="Microsoft Research Paraphrase corpus test (1,725 pairs)"),
        TaskSpec("Banking77Classification", "classification",
                 {"train": "classification/banking77/train.csv", "test": "classification/banking77/test.csv"},
                 {"text": "text", "label": "category"}, reference="Banking77 (MTEB protocol)"),
        TaskSpec("Banking77Clustering", "clustering", {"test": "classification/banking77/test.csv"},
                 {"text": "text", "label": "category"},
                 reference="derived: Banking77 test texts clustered into their 77 intents"),
    ]
}

SUITES: dict[str, tuple[str, ...]] = {
    "default": ("SciFact", "SciFactReranking", "STSBenchmark", "MSRP", "Banking77Classification",
                "Banking77Clustering"),
    "sts": tuple(n for n, t in REGISTRY.items() if t.type == "sts"),
    "multilingual-sts": tuple(n for n, t in REGISTRY.items() if t.type == "sts" and t.name != "STSBenchmark"),
    "quick": ("STSBenchmark", "MSRP", "Banking77Classification", "Banking77Clustering"),
    "all": tuple(REGISTRY),
}


def resolve_tasks(names: list[str] | None = None, suite: str | None = None) -> list[TaskSpec]:
    """Tasks by name and / or a named suite, in order, without repeats; a clear error for unknown names."""
    chosen: list[str] = []
    if suite is not None:
        if suite not in SUITES:
            raise DataError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
        chosen.extend(SUITES[suite])
    for name in names or []:
        if name not in REGISTRY:
            close = [n for n in REGISTRY if n.lower() == name.lower()]
            hint = f"; did you mean {close[0]}?" if close else f" (known: {', '.join(REGISTRY)})"
            raise DataError(f"unknown task {name!r}{hint}")
        chosen.append(name)
    return [REGISTRY[n] for n in dict.fromkeys(chosen)]


def default_data_root() -> Path | None:
    """``$FLAGSTONE_DATA``, else ``shared/data`` beside or above the working directory, if present."""
    env = os.environ.get("FLAGSTONE_DATA")
    if env:
        return Path(env)
    for candidate in (Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None
