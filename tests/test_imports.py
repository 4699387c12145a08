"""`import flagstone` and the CLI's start-up stay light: torch and transformers load only with a model."""
from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_import_does_not_load_heavy_libraries():
    code = ("import sys, flagstone, flagstone.cli, flagstone.evaluation.metrics, flagstone.retrieval.bm25, "
            "flagstone.models.reranker, flagstone.evaluation.suite, flagstone.training.mining, flagstone.rag, "
            "flagstone.models.generator, flagstone.evaluation.qa; "
            "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'sklearn', 'httpx') if m in sys.modules]; "
            "print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lazy_exports_resolve():
    import flagstone

    assert flagstone.BM25.__name__ == "BM25" and callable(flagstone.evaluate_run)
    for name in flagstone.__all__:
        assert getattr(flagstone, name) is not None
