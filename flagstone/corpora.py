"""A corpus that exists on every machine: the docstrings of Python's own standard library.

Parsed with ``ast`` from the source files (nothing is imported, so no module runs), which makes it a
safe, real, offline corpus for the demo and for tests.
"""
from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__",
               "turtledemo", "ensurepip", "venv", "pydoc_data"}


def _docstrings_of(path: Path, module: str, min_chars: int) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc) >= min_chars:
            found.append((prefix, doc))
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if not child.name.startswith("_"):
                    visit(child, f"{prefix}.{child.name}")

    visit(tree, module)
    return found


def python_docstrings(limit: int | None = 2000, *, min_chars: int = 80) -> tuple[list[str], list[str]]:
    """(ids, texts) of public standard-library docstrings, ids like ``json.JSONDecoder.decode``.

    ``limit`` keeps an evenly spaced, deterministic sample across all modules.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    entries: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_PARTS & set(rel.parts) or any(p.startswith("_") and p != "__init__.py" for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        entries.extend(_docstrings_of(path, ".".join(parts), min_chars))
    if limit is not None and len(entries) > limit:
        step = len(entries) / limit
        entries = [entries[int(i * step)] for i in range(limit)]
    return [e[0] for e in entries], [e[1] for e in entries]
