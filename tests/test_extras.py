"""pip extras: every extra an error message names exists in pyproject.toml and brings the modules the
message is about; `all` is every runtime extra, and `test` and `bench` carry all of it."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import numpy as np
import pytest

from flagstone.errors import MissingDependencyError, require_extra
from tests.helpers import REPO

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")

RUNTIME_EXTRAS = {"index", "server", "llm", "train", "ray", "onnx", "openvino"}
TOOL_EXTRAS = {"test", "bench"}  # "all" plus the test suite's or the benchmarks' own packages


def extras() -> dict[str, list[str]]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["optional-dependencies"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def packages_of(extra: str, table: dict[str, list[str]]) -> set[str]:
    """The distributions an extra installs, following `flagstone[...]` references."""
    out: set[str] = set()
    for requirement in table[extra]:
        inner = re.fullmatch(r"flagstone\[([\w,\s-]+)\]", requirement.strip())
        if inner:
            for name in inner.group(1).split(","):
                out |= packages_of(name.strip(), table)
        else:
            out.add(requirement_name(requirement))
    return out


def source_files():
    yield from sorted((REPO / "flagstone").rglob("*.py"))
    yield from sorted((REPO / "scripts").glob("*.sh"))
    yield REPO / "README.md"


def require_extra_calls() -> list[tuple[str, str, tuple[str, ...]]]:
    """(where, extra, modules) of every require_extra(...) call in the package, literals only."""
    calls = []
    for path in sorted((REPO / "flagstone").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_extra":
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                extra, modules = node.args[0], node.args[1]
                assert isinstance(extra, ast.Constant) and isinstance(modules, ast.Tuple), \
                    f"{where}: require_extra takes a literal extra name and a literal tuple of modules"
                calls.append((where, extra.value, tuple(m.value for m in modules.elts)))
    return calls


def test_every_extra_named_in_the_source_exists():
    table = extras()
    named = []
    for path in source_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in re.finditer(r"flagstone\[([^\]]*)\]", line):
                if "{" in match.group(1):  # require_extra's own f-string: its callers are checked below
                    continue
                named += [(f"{path.relative_to(REPO)}:{number}", n.strip()) for n in match.group(1).split(",")]
    named += [(where, extra) for where, extra, _ in require_extra_calls()]
    assert named, "no pip extras named anywhere: the scan is broken"
    unknown = [f"{where}: flagstone[{name}]" for where, name in named if name not in table]
    assert not unknown, f"extras named but not defined in pyproject.toml: {unknown}"


def test_each_hint_names_the_extra_that_installs_its_modules():
    table = extras()
    distributions = importlib.metadata.packages_distributions()
    calls = require_extra_calls()
    assert {extra for _, extra, _ in calls} == RUNTIME_EXTRAS, "every runtime extra guards something"
    for where, extra, modules in calls:
        for module in modules:
            assert module in distributions, f"{where}: {module} is not installed, though the test extra has all"
            dists = {requirement_name(d) for d in distributions[module]}
            assert dists & packages_of(extra, table), f"{where}: {module} ({dists}) is not in flagstone[{extra}]"


def test_all_is_every_runtime_extra_and_test_and_bench_carry_it():
    table = extras()
    assert set(table) == RUNTIME_EXTRAS | TOOL_EXTRAS | {"all"}, "a new extra belongs in all or is a tool extra"
    assert packages_of("all", table) == set().union(*(packages_of(e, table) for e in RUNTIME_EXTRAS))
    for tool in TOOL_EXTRAS:
        assert "flagstone[all]" in table[tool]
    setup = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert 'extras="${1:-all}"' in setup, "scripts/setup.sh (scripts/demo.sh) installs all by default"


def hide(monkeypatch, *modules: str) -> None:
    """Make modules look uninstalled: find_spec returns None and import fails for a None in sys.modules."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_extra_names_the_missing_modules_and_the_extra(monkeypatch):
    hide(monkeypatch, "numba")
    with pytest.raises(MissingDependencyError, match=r"IVF needs numba: pip install 'flagstone\[index\]'"):
        require_extra("index", ("numpy", "numba"), "IVF needs")
    require_extra("index", ("numpy",), "IVF needs")


def test_ivf_search_without_numba_names_the_index_extra(monkeypatch):
    from flagstone.index.flat import FlatIndex
    from flagstone.index.ivf import IVFIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(i) for i in range(200)]
    ivf = IVFIndex(8, n_lists=4)
    ivf.add(ids, vectors)
    flat = FlatIndex(8)
    flat.add(ids, vectors)
    import flagstone.index

    # forget the compiled kernels (module and package attribute) so the next search imports them again
    monkeypatch.delitem(sys.modules, "flagstone.index._kernels", raising=False)
    monkeypatch.delattr(flagstone.index, "_kernels", raising=False)
    hide(monkeypatch, "numba")
    with pytest.raises(MissingDependencyError, match=r"flagstone\[index\]"):
        ivf.search(vectors[:2], 5)
    # exact search does not need the extra: NumPy's top-k gives the same results
    assert flat.search(vectors[:2], 5).positions[:, 0].tolist() == [0, 1]


def test_serve_without_the_server_extra_names_it(monkeypatch, capsys):
    from flagstone.cli import main

    hide(monkeypatch, "fastapi")
    assert main(["serve", "--port", "1"]) == 2
    assert "pip install 'flagstone[server]'" in capsys.readouterr().err


def test_gguf_without_accelerate_names_the_llm_extra(monkeypatch, tmp_path):
    from flagstone.models.causal_lm import resolve_causal_lm

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    hide(monkeypatch, "accelerate")
    with pytest.raises(MissingDependencyError, match=r"accelerate: pip install 'flagstone\[llm\]'"):
        resolve_causal_lm(gguf, cache_dir=tmp_path / "cache")
