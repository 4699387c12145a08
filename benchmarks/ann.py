"""How fast and how exact is approximate search? Flagstone's flat, IVF and HI² against faiss and hnswlib.

Real vectors only: about 69,000 short texts from ../shared/data plus SciFact's documents, encoded with the
bundled all-MiniLM-L6-v2 (see ann_data.py); 1,000 held-out questions as queries; ground truth is exact
top-100. For each method the speed knob is swept; each row reports recall@10 / recall@100 against exact,
queries/second in batch mode (all queries in one call, 2 threads), single-query latency p50 / p99 (one
thread), documents evaluated per query, bytes per document and build time. HI² takes its salient terms
from BM25 over the same texts. Also: SciFact nDCG@10 of HI² against exact search.

    python benchmarks/ann.py [--quick]

Writes benchmarks/results/ann.json, ann.md and ann.png (recall@10 against queries/second).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, save_results
from ann_data import load_ann_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
K = 100
LATENCY_QUERIES = 200
PROBES = [1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512]


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(np.intersect1d(f[:k], t[:k])) / k for f, t in zip(found, truth)]))


def single_query_latency(search_one: Callable[[int], object], n: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of one-query calls, one thread everywhere."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    times = []
    with threadpool_limits(1):
        search_one(0)
        for i in range(n):
            start = time.perf_counter()
            search_one(i)
            times.append((time.perf_counter() - start) * 1000)
    faiss.omp_set_num_threads(2)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


class Bench:
    def __init__(self, data, truth: np.ndarray, quick: bool) -> None:
        self.data = data
        self.truth = truth
        self.rows: list[dict] = []
        self.latency_n = 50 if quick else LATENCY_QUERIES

    def record(self, method: str, params: dict, found: np.ndarray, seconds: float, latency: tuple[float, float],
               docs_evaluated: float | None, bytes_per_doc: float, build_s: float) -> None:
        row = {"method": method, "params": params, "recall@10": recall_at(found, self.truth, 10),
               "recall@100": recall_at(found, self.truth, 100), "qps_batch": len(found) / seconds,
               "p50_ms": latency[0], "p99_ms": latency[1], "docs_evaluated": docs_evaluated,
               "bytes_per_doc": bytes_per_doc, "build_s": build_s}
        self.rows.append(row)
        print(f"{method:18s} {str(params):42s} R@10 {row['recall@10']:.4f} R@100 {row['recall@100']:.4f} "
              f"{row['qps_batch']:8.0f} q/s p50 {latency[0]:6.2f} ms evaluated "
              f"{docs_evaluated if docs_evaluated is None else round(docs_evaluated)}", flush=True)


def flagstone_methods(bench: Bench, quick: bool, doc_terms, query_terms) -> None:
    from flagstone.index.flat import FlatIndex
    from flagstone.index.hi2 import HI2Index
    from flagstone.index.ivf import IVFIndex
    from flagstone.models.embeddings import Embeddings

    d = bench.data
    dim = d.doc_vectors.shape[1]
    probes = PROBES if not quick else [4, 16]
    configs = [("flagstone-flat", lambda: FlatIndex(dim), [None]),
               ("flagstone-ivf", lambda: IVFIndex(dim), probes),
               ("flagstone-hi2", lambda: HI2Index(dim), probes),
               ("flagstone-hi2-pq", lambda: HI2Index(dim, codec="pq"), probes)]
    for method, make, sweep in configs:
        start = time.perf_counter()
        index = make()
        if isinstance(index, HI2Index):
            index.add(d.doc_ids, Embeddings(dense=d.doc_vectors, sparse=doc_terms))
            _ = index.postings  # built at first search otherwise; count it as build time
        else:
            index.add(d.doc_ids, d.doc_vectors)
        build_s = time.perf_counter() - start

        def search(queries, terms):
            if isinstance(index, HI2Index):
                return index.search(Embeddings(dense=queries, sparse=terms), K)
            return index.search(queries, K)

        search(d.query_vectors[:8], query_terms.take(np.arange(8)))  # warm-up: compiles the numba kernels
        for n_probe in sweep:
            if n_probe is not None:
                index.n_probe = n_probe
            start = time.perf_counter()
            result = search(d.query_vectors, query_terms)
            seconds = time.perf_counter() - start
            latency = single_query_latency(
                lambda i: search(d.query_vectors[i : i + 1], query_terms.take([i])), bench.latency_n)
            params = index.params()
            params = {k: params[k] for k in ("n_lists", "n_probe", "terms_per_doc", "terms_per_query",
                                             "max_posting", "codec", "pq_m") if k in params}
            # IVF and HI² store rows in cluster order: translate rows back to document numbers
            row_to_doc = np.array([int(i[1:]) for i in index.ids], dtype=np.int64)
            found = np.where(result.positions >= 0, row_to_doc[np.maximum(result.positions, 0)], -1)
            bench.record(method, params, found, seconds, latency, float(result.docs_evaluated.mean()),
                         index.bytes_per_document(), build_s)


def faiss_methods(bench: Bench, quick: bool, n_lists: int) -> None:
    import faiss

    d = bench.data
    x, q = d.doc_vectors, d.query_vectors
    dim, n = x.shape[1], len(x)
    probes = PROBES if not quick else [4, 16]
    ef_values = [100, 200, 400] if not quick else [100]
    pq_m = 96

    def build(make):
        start = time.perf_counter()
        index = make()
        if not index.is_trained:
            index.train(x)
        index.add(x)
        return index, time.perf_counter() - start

    def run(method, index, params, build_s, evaluated):
        start = time.perf_counter()
        _, found = index.search(q, K)
        seconds = time.perf_counter() - start
        latency = single_query_latency(lambda i: index.search(q[i : i + 1], K), bench.latency_n)
        size = len(faiss.serialize_index(index)) / n
        bench.record(method, params, found, seconds, latency, evaluated(), size, build_s)

    flat, build_s = build(lambda: faiss.IndexFlatIP(dim))
    run("faiss-flat", flat, {}, build_s, lambda: float(n))
    for method, make in (("faiss-ivfflat", lambda: faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, n_lists,
                                                                       faiss.METRIC_INNER_PRODUCT)),
                         ("faiss-ivfpq", lambda: faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, n_lists, pq_m, 8,
                                                                   faiss.METRIC_INNER_PRODUCT))):
        index, build_s = build(make)
        sizes = np.array([index.invlists.list_size(i) for i in range(n_lists)])
        for n_probe in probes:
            index.nprobe = n_probe
            _, probed = index.quantizer.search(q, n_probe)
            run(method, index, {"n_lists": n_lists, "n_probe": n_probe} | ({"pq_m": pq_m} if "pq" in method else {}),
                build_s, lambda: float(sizes[probed].sum(axis=1).mean()))
    hnsw, build_s = build(lambda: faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))
    hnsw.hnsw.efConstruction = 200
    for ef in ef_values:
        hnsw.hnsw.efSearch = ef
        faiss.cvar.hnsw_stats.reset()
        _, _ = hnsw.search(q, K)
        ndis = faiss.cvar.hnsw_stats.ndis / len(q)
        run("faiss-hnsw", hnsw, {"M": 32, "efSearch": ef}, build_s, lambda: float(ndis))


def hnswlib_method(bench: Bench, quick: bool) -> None:
    import hnswlib

    d = bench.data
    x, q = d.doc_vectors, d.query_vectors
    start = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    index.init_index(max_elements=len(x), ef_construction=200, M=32, random_seed=1)
    index.add_items(x, np.arange(len(x)), num_threads=2)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        index.save_index(str(Path(tmp) / "h.bin"))
        size = (Path(tmp) / "h.bin").stat().st_size / len(x)
    for ef in ([100, 200, 400] if not quick else [100]):
        index.set_ef(ef)
        start = time.perf_counter()
        found, _ = index.knn_query(q, k=K, num_threads=2)
        seconds = time.perf_counter() - start
        latency = single_query_latency(lambda i: index.knn_query(q[i : i + 1], k=K, num_threads=1), bench.latency_n)
        bench.record("hnswlib", {"M": 32, "ef": ef}, found.astype(np.int64), seconds, latency, None, size, build_s)


def scifact_check() -> dict[str, float]:
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.retrieval import evaluate_retrieval
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder
    from flagstone.retrieval.retriever import Retriever

    data = load_beir(SHARED_DATA / "beir" / "scifact", "test")
    embedder = Embedder(show_progress=False)
    out = {}
    for name, index in (("exact", "flat"), ("hi2", "hi2")):
        retriever = Retriever(embedder, signals=["dense"], cache=EmbeddingCache(), dense_index=index)
        report = evaluate_retrieval(retriever, data, modes=["dense"], k_values=(10,), depth=10)  # depth as before
        out[f"{name}_ndcg@10"] = report.results["dense"].metrics.mean["ndcg@10"]
        if name == "hi2":
            out["hi2_params"] = retriever.indexes["dense"].params()
    return out


def first_at(rows: list[dict], method: str, target: float) -> dict | None:
    hits = [r for r in rows if r["method"] == method and r["recall@10"] >= target]
    return min(hits, key=lambda r: r["docs_evaluated"] or 0) if hits else None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["recall@10"], r["qps_batch"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xlim(0.8, 1.002)  # the useful range; lower-recall points are in ann.md
    ax.set_xlabel("recall@10 against exact search")
    ax.set_ylabel("queries / second (batch, 2 threads)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Recall against speed on 69k real MiniLM embeddings")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sweep points (a smoke run)")
    args = parser.parse_args()
    import faiss

    from flagstone.index.ivf import default_n_lists
    from flagstone.retrieval.bm25 import BM25

    faiss.omp_set_num_threads(2)
    data = load_ann_data(show_progress=True)
    n, dim = data.doc_vectors.shape
    print(f"{n} documents, {len(data.query_texts)} queries, dim {dim}", flush=True)
    scores = data.query_vectors @ data.doc_vectors.T
    truth = np.argsort(-scores, axis=1)[:, :K]
    bm25 = BM25()
    doc_terms = bm25.fit_transform(data.doc_texts)
    query_terms = bm25.transform_queries(data.query_texts)

    bench = Bench(data, truth, args.quick)
    flagstone_methods(bench, args.quick, doc_terms, query_terms)
    faiss_methods(bench, args.quick, default_n_lists(n))
    hnswlib_method(bench, args.quick)
    scifact = scifact_check()

    out = {"n_docs": n, "dim": dim, "n_queries": len(data.query_texts), "rows": bench.rows, "scifact": scifact}
    lines = ["| method | params | R@10 | R@100 | q/s batch | p50 ms | p99 ms | docs evaluated | bytes/doc | build s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench.rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        evaluated = "n/a" if r["docs_evaluated"] is None else f"{r['docs_evaluated']:.0f}"
        lines.append(f"| {r['method']} | {params} | {r['recall@10']:.4f} | {r['recall@100']:.4f} | "
                     f"{r['qps_batch']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {evaluated} | "
                     f"{r['bytes_per_doc']:.0f} | {r['build_s']:.1f} |")
    lines.append("")
    lines.append(f"{n} documents x {dim} dims, {len(data.query_texts)} queries, k = {K}.")
    for target in (0.99, 0.95):
        found = {m: first_at(bench.rows, m, target) for m in ("flagstone-hi2", "flagstone-ivf", "faiss-ivfflat")}
        parts = [f"{m}: " + (f"{r['docs_evaluated']:.0f} docs evaluated, {r['qps_batch']:.0f} q/s"
                             if r else "not reached") for m, r in found.items()]
        lines.append(f"At recall@10 >= {target}: " + "; ".join(parts) + ".")
        out[f"at_recall_{target}"] = {m: r for m, r in found.items()}
    lines.append(f"SciFact test nDCG@10: exact {scifact['exact_ndcg@10']:.4f}, HI² {scifact['hi2_ndcg@10']:.4f}.")
    plot(bench.rows, RESULTS / "ann.png")
    save_results("ann", "\n".join(lines), ann=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
