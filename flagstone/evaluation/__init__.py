"""Evaluation: retrieval metrics and reports, MTEB-style task suites, QA and needle-in-a-haystack scoring."""
from __future__ import annotations

# The number of hits retrieved per query whenever Flagstone evaluates retrieval (``flagstone eval``, the task
# suite, the benchmarks). It matters beyond recall@depth: hybrid fusion rescores each signal's top
# max(candidates, depth) documents, so even hybrid nDCG@10 moves with it (SciFact: 0.7400 at 100, 0.7363 at
# 1000). Kept here, in a module without imports, so the CLI can show it without loading numpy.
DEFAULT_EVAL_DEPTH = 100
