"""What exact scoring pays for being the same bit for bit in a shard and in one index.

Flagstone's exact scores (``flagstone.models.scoring.blocked_inner_products``: flat search, IVF / HI² list
scans with the flat codec, refinement, ColBERT) sum the products in float64 and round once to float32. This
benchmark measures, in one process on the same vectors:

- ``float32 BLAS``: the same blocked products in float32 (what Flagstone did before), then a top-10;
- ``float64 sums``: ``blocked_inner_products`` (Flagstone's kernel), then the same top-10;
- ``flagstone``: ``FlatIndex.search`` (the kernel plus the index's id mapping and result assembly);
- ``faiss IndexFlatIP``: the peer, float32;

for batches of 1, 32 and 256 queries (best of ``--repeats``), and how many of a shard's top-10 scores differ
from one index's over the whole corpus (the shard holds every other document) for each way of scoring.
Vectors: seeded random unit vectors (``--docs`` x ``--dim``), queries likewise; threads: 1 (``--threads``).
Writes benchmarks/results/exact_scoring.{json,md}; runs are appended, never replaced.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from _common import append_run


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def float32_scores(queries: np.ndarray, rows: np.ndarray, block: int) -> np.ndarray:
    out = np.empty((len(queries), len(rows)), dtype=np.float32)
    for start in range(0, len(rows), block):
        out[:, start : start + block] = queries @ rows[start : start + block].T
    return out


def top10(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    part = np.argpartition(-scores, 10, axis=1)[:, :10]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    positions = np.take_along_axis(part, order, axis=1)
    return positions, np.take_along_axis(scores, positions, axis=1)


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000, help="documents (default: 50000)")
    parser.add_argument("--dim", type=int, default=384, help="dimensions (default: 384, MiniLM's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats, best kept (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS / faiss threads (default: 1)")
    args = parser.parse_args()
    if args.docs < 20 or args.dim < 1 or args.repeats < 1 or args.threads < 1:
        print("--docs must be at least 20, --dim, --repeats and --threads at least 1", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_limits

    import faiss

    from flagstone.index.flat import FlatIndex
    from flagstone.models.scoring import SCORE_BLOCK, blocked_inner_products

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    docs = unit_rows(rng, args.docs, args.dim)
    ids = [f"d{i}" for i in range(args.docs)]
    index = FlatIndex(args.dim)
    index.add(ids, docs)
    peer = faiss.IndexFlatIP(args.dim)
    peer.add(docs)
    rows = []
    with threadpool_limits(args.threads):
        for batch in (1, 32, 256):
            queries = unit_rows(rng, batch, args.dim)
            seconds = {
                "float32 BLAS": best_seconds(lambda: top10(float32_scores(queries, docs, SCORE_BLOCK)), args.repeats),
                "float64 sums": best_seconds(lambda: top10(blocked_inner_products(queries, docs)), args.repeats),
                "flagstone": best_seconds(lambda: index.search(queries, 10), args.repeats),
                "faiss IndexFlatIP": best_seconds(lambda: peer.search(queries, 10), args.repeats),
            }
            rows.append({"queries": batch, "ms": {name: round(1000 * s, 2) for name, s in seconds.items()},
                         "float64_over_float32": round(seconds["float64 sums"] / seconds["float32 BLAS"], 2),
                         "flagstone_over_faiss": round(seconds["flagstone"] / seconds["faiss IndexFlatIP"], 2)})
        # a shard holding every other document against one index over all of them: its top-10 scores
        queries = unit_rows(rng, 256, args.dim)
        shard_rows = np.arange(0, args.docs, 2)
        shard = FlatIndex(args.dim)
        shard.add([ids[i] for i in shard_rows], docs[shard_rows])
        whole_f32 = float32_scores(queries, docs, SCORE_BLOCK)[:, shard_rows]
        shard_f32 = float32_scores(queries, docs[shard_rows], SCORE_BLOCK)
        differ_f32 = int((top10(whole_f32)[1] != top10(shard_f32)[1]).sum())
        whole_flag = index.search(queries, 10, allow=[ids[i] for i in shard_rows])
        shard_flag = shard.search(queries, 10)
        differ_flag = int((whole_flag.scores != shard_flag.scores).sum())
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown") if os.path.exists("/proc/cpuinfo") else "unknown"
    lines = [f"Exact top-10 over {args.docs:,} random unit vectors of {args.dim} dimensions, {args.threads} thread(s), "
             f"best of {args.repeats}; CPU: {cpu}.", "",
             "| queries | float32 BLAS ms | float64 sums ms | FlatIndex.search ms | faiss IndexFlatIP ms "
             "| float64 / float32 | FlatIndex / faiss |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ms = row["ms"]
        lines.append(f"| {row['queries']} | {ms['float32 BLAS']} | {ms['float64 sums']} | {ms['flagstone']} | "
                     f"{ms['faiss IndexFlatIP']} | {row['float64_over_float32']}x | {row['flagstone_over_faiss']}x |")
    lines += ["", f"A shard holding every other document against one index over all of them, 256 queries x top-10 "
                  f"scores: {differ_f32} of 2560 differ with float32 BLAS products, {differ_flag} with Flagstone's."]
    run = {"arguments": vars(args), "cpu": cpu, "batches": rows,
           "shard_top10_scores_differing": {"float32 BLAS": differ_f32, "flagstone": differ_flag}}
    append_run("exact_scoring", run, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
