from __future__ import annotations

import os

import pytest

from tests.helpers import (
    SCIFACT,
    SHARED_DATA,
    build_tiny_causal_lm,
    build_tiny_cross_encoder,
    build_tiny_m3,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray Data's usage collector starts a daemon thread that queries a Prometheus server every 10 s for the rest
# of the process and logs each failure with its traceback. Under pytest's log capture, Python 3.11 formats
# those tracebacks with ast.parse in that thread, and CPython 3.11 keeps the AST recursion counter per
# interpreter, so a main-thread ast.parse at the same moment fails with "SystemError: AST constructor
# recursion depth mismatch" (what failed the training tests after the Ray tests in one process).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    # one pytest-xdist worker per core (scripts/test.sh): each worker, and the CLI processes it starts,
    # computes on one thread instead of every worker spreading over all cores
    os.environ["OMP_NUM_THREADS"] = "1"

# the longest files (minutes each on 2 cores) start first: pytest-xdist hands out whole files in collection order
# (--dist loadfile), and the README's commands collected last kept one worker busy while the other sat idle
LONGEST_FIRST = ("tests/test_readme.py", "tests/distributed/test_ray.py")


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file (the README's commands build on each other) is kept


@pytest.fixture(scope="session")
def minilm():
    from flagstone.models.embedder import Embedder

    return Embedder(show_progress=False)


@pytest.fixture(scope="session")
def tiny_m3_dir(tmp_path_factory):
    return build_tiny_m3(tmp_path_factory.mktemp("tiny-m3"))


@pytest.fixture(scope="session")
def tiny_m3(tiny_m3_dir):
    from flagstone.models.embedder import Embedder

    return Embedder(str(tiny_m3_dir), show_progress=False)


@pytest.fixture(scope="session")
def scifact_dir():
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT} (the shared data folder is absent)")
    return SCIFACT


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce") / "reranker")


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "lm", chat_template=True)


@pytest.fixture(scope="session")
def shared_data():
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"the shared data folder is absent ({SHARED_DATA})")
    return SHARED_DATA
