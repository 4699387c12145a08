"""How does a model do across MTEB task types? Runs Flagstone's evaluation suite (every built-in task:
SciFact retrieval and reranking, STS-B in 11 languages and 5 cross-lingual pairs, MSRP, Banking77
classification and clustering) and compares the bundled all-MiniLM-L6-v2 with its published MTEB scores.

    python benchmarks/eval_suite.py [--model all-MiniLM-L6-v2] [--suite all]

Writes benchmarks/results/eval_suite.json (one entry per task, MTEB-style main score), eval_suite.md, and
one MTEB-layout result file per task under benchmarks/results/eval_suite/.
"""
from __future__ import annotations

import argparse
import sys
import time

from _common import RESULTS, SHARED_DATA, save_results

from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.suite import run_suite
from flagstone.evaluation.tasks import resolve_tasks
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder

# all-MiniLM-L6-v2 on the MTEB leaderboard (x100), for the tasks that exist there under the same protocol
PUBLISHED = {"SciFact": 64.51, "STSBenchmark": 82.03, "Banking77Classification": 80.04}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--suite", default="all")
    parser.add_argument("--depth", type=int, default=DEFAULT_EVAL_DEPTH,
                        help=f"hits retrieved per query in retrieval tasks (default: {DEFAULT_EVAL_DEPTH})")
    args = parser.parse_args()
    if not (SHARED_DATA / "README.md").is_file():
        print(f"shared data not found at {SHARED_DATA}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    embedder = Embedder(args.model, show_progress=False)

    def show(r) -> None:
        print(f"{r.task.name:26s} {100 * r.main_score:6.2f}  {r.seconds:6.1f} s", flush=True)

    # each task's file is written as it finishes; overwrite: a benchmark run always recomputes every task
    report = run_suite(resolve_tasks(suite=args.suite), embedder, data_root=SHARED_DATA, cache=EmbeddingCache(),
                       depth=args.depth, output_dir=RESULTS / "eval_suite", overwrite=True, show_progress=False,
                       on_result=show)
    summary = report.summary()
    summary["published_mteb_x100"] = PUBLISHED
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    lines = [report.table(), "", "| task | Flagstone (x100) | published MTEB (x100) | difference |", "|---|---|---|---|"]
    for r in report.results:
        if r.task.name in PUBLISHED:
            ours = 100 * r.main_score
            lines.append(f"| {r.task.name} | {ours:.2f} | {PUBLISHED[r.task.name]:.2f} | "
                         f"{ours - PUBLISHED[r.task.name]:+.2f} |")
    save_results("eval_suite", "\n".join(lines), eval_suite=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
