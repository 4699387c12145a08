"""The ``flagstone.cli`` package: every command is listed, command modules stand alone and form no cycle."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flagstone import cli
from tests.helpers import REPO

CLI_DIR = Path(cli.__file__).parent
COMMAND_MODULES = sorted(p.stem for p in CLI_DIR.glob("*.py") if not p.stem.startswith("_"))


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_every_group_is_registered():
    assert COMMAND_MODULES == sorted(g.__name__.rsplit(".", 1)[1] for g in cli.GROUPS)
    names = [name for g in cli.GROUPS for name in g.COMMANDS]
    assert len(names) == len(set(names)) and set(names) == set(cli.COMMANDS)


@pytest.mark.parametrize("entry", [["-m", "flagstone"], ["-m", "flagstone.cli"]])
def test_help_lists_every_command(entry):
    result = run(*entry, "--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("positional arguments:")[1]
    names = ("demo", "models", "encode", "search", "eval", "index", "mine", "train", "merge", "inters-data", "ask",
             "serve", "data")
    for name in names:
        assert f"\n    {name} " in listed or f"\n    {name}\n" in listed, name  # a long name wraps
    assert set(cli.COMMANDS) == set(names)


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_module_imports_on_its_own(module):
    code = (f"import sys, importlib; m = importlib.import_module('flagstone.cli.{module}'); "
            "assert callable(m.add_parsers) and m.COMMANDS and all(map(callable, m.COMMANDS.values())); "
            "heavy = [h for h in ('torch', 'transformers') if h in sys.modules]; assert not heavy, heavy")
    result = run("-c", code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", [*COMMAND_MODULES, "_common"])
def test_command_modules_import_only_common_from_the_cli(module):
    tree = ast.parse((CLI_DIR / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flagstone"):
            imported.add(node.module)
            if node.module == "flagstone":
                imported |= {f"flagstone.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    from_cli = {m for m in imported if m == "flagstone.cli" or m.startswith("flagstone.cli.")}
    allowed = set() if module == "_common" else {"flagstone.cli._common"}
    assert from_cli <= allowed, from_cli
