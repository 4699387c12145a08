"""The package's layering: every import points down (or sideways within a layer) and no modules import
each other in a cycle. Module-level, function-level and ``TYPE_CHECKING`` imports all count."""
from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.helpers import REPO

# Lowest first. A key names a module or a subpackage (and everything under it); the longest matching key
# wins. The top-level package's own key covers its __init__ only, so a new top-level module or subpackage
# is in no layer until it is placed here.
LAYERS: dict[str, int] = {
    "flagstone.errors": 0,
    "flagstone._io": 0,
    "flagstone._version": 0,
    "flagstone.corpora": 0,
    "flagstone.models": 1,
    "flagstone.index": 2,
    "flagstone.retrieval": 3,
    "flagstone.rerank": 4,
    "flagstone.evaluation": 5,
    "flagstone.training": 5,
    "flagstone.genir": 5,
    "flagstone.newsrec": 5,
    "flagstone.inters": 5,
    "flagstone.rag": 6,
    "flagstone.longctx": 6,
    "flagstone.distributed": 7,
    "flagstone.server": 7,
    "flagstone.cli": 8,
    "flagstone.__main__": 8,
    "flagstone": 9,  # the top-level lazy export table, above everything
}
# the lazy export table may import anything: it is not checked as a source
EXCLUDED_SOURCES = frozenset({"flagstone"})


def discover_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file for every module of ``package`` (a folder under ``root``); a package is its __init__."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(target: str, modules: Mapping[str, Path]) -> str | None:
    """The module ``target`` names, else the closest enclosing one that exists (None: none does)."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def import_edges(name: str, path: Path, modules: Mapping[str, Path], package: str) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its file (functions included).

    ``import a.b`` is an edge to ``a.b``; ``from a import b`` to ``a.b`` when that is a module, else to
    ``a`` (a package's ``__init__``). Relative imports are resolved against the module's package.
    """
    is_package = path.name == "__init__.py"
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in modules else source)
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue  # a third-party or standard-library module
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                edges.add(resolved)
    return edges


def layer_of(module: str, layers: Mapping[str, int]) -> int | None:
    """The layer of the longest key of ``layers`` that is ``module`` or a subpackage above it (the
    top-level package's key matches only the package itself)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        key = ".".join(parts[:n])
        if key in layers:
            return layers[key]
    return layers.get(module) if len(parts) == 1 else None


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def check_layers(root: Path, package: str, layers: Mapping[str, int],
                 excluded_sources: Iterable[str] = ()) -> list[str]:
    """Every layering problem of ``package`` under ``root``, one line each (empty: none)."""
    modules = discover_modules(root, package)
    excluded = set(excluded_sources)
    problems = [f"{m} ({modules[m].relative_to(root)}) is in no layer: add it to the LAYERS table"
                for m in sorted(modules) if layer_of(m, layers) is None]
    graph = {m: import_edges(m, modules[m], modules, package) for m in sorted(modules) if m not in excluded}
    for source, targets in graph.items():
        low = layer_of(source, layers)
        for target in sorted(targets):
            high = layer_of(target, layers)
            if low is not None and high is not None and high > low:
                problems.append(f"upward import: {source} (layer {low}) -> {target} (layer {high})")
    for component in strongly_connected(graph):
        if len(component) > 1:
            members = set(component)
            edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
            problems.append(f"import cycle between {', '.join(component)}: {'; '.join(edges)}")
    return problems


def test_flagstone_imports_respect_the_layers():
    problems = check_layers(REPO, "flagstone", LAYERS, EXCLUDED_SOURCES)
    assert not problems, "layering problems:\n" + "\n".join(problems)


def test_the_check_reports_an_upward_import_a_cycle_and_an_unplaced_module(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from pkg.high import g  # upward, inside a function\n",
        "low/b.py": "from . import c\n",  # b -> c -> b: a cycle through a relative import
        "low/c.py": "import pkg.low.b\nimport numpy\n",
        "high.py": "from pkg.low import b\n\ndef g():\n    pass\n",
        "stray.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    problems = check_layers(tmp_path, "pkg", {"pkg.low": 0, "pkg.high": 1, "pkg": 2}, excluded_sources={"pkg"})
    assert "upward import: pkg.low.a (layer 0) -> pkg.high (layer 1)" in problems
    assert "import cycle between pkg.low.b, pkg.low.c: pkg.low.b -> pkg.low.c; pkg.low.c -> pkg.low.b" in problems
    assert any(p.startswith("pkg.stray (pkg/stray.py) is in no layer") for p in problems)
    assert len(problems) == 3, problems
