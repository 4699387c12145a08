"""How fast and how exact is approximate search? Flagstone's flat, IVF and HI² against faiss and hnswlib.

Real vectors only: about 69,000 short texts from ../shared/data plus SciFact's documents, encoded with the
bundled all-MiniLM-L6-v2 (see ann_data.py); 1,000 held-out questions as queries; ground truth is exact
top-100. For each method the speed knob is swept; each row reports recall@10 / recall@100 against exact,
queries/second in batch mode (all queries in one call, 2 threads), single-query latency p50 / p99 (one
thread), documents evaluated per query, bytes per document and build time. HI² takes its salient terms
from BM25 over the same texts. Also: SciFact nDCG@10 of exact search, HI² and IVF with their defaults.

Memory, two ways. ``bytes/doc`` is the index's own accounting: Flagstone's ``describe()`` (arrays kept in RAM;
refinement vectors, memory-mapped from disk, are listed apart), faiss's serialised size, hnswlib's saved file.
``RSS`` is measured (ann_rss.py): each index is saved, then a fresh process loads its libraries and warms
up, loads the saved index and searches 100 queries; the growth of its resident anonymous memory (RssAnon
in /proc/self/status) and of its resident file-backed pages (RssFile: memory-mapped files, i.e. page cache
it touched) is divided by the number of documents. Flagstone's ids (UTF-8 bytes, offsets and their hash
table) count in both.

    python benchmarks/ann.py [--quick] [--docs N]

Writes benchmarks/results/ann.json, ann.md and ann.png (recall@10 against queries/second, marker area
proportional to the resident bytes per document).
"""
from __future__ import annotations

import argparse
import copy
import os
import pickle
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
PQ_PROBES = [16, 32, 48, 64, 80, 96, 128, 192, 256]  # finer where recall@10 crosses 0.99
NO_REFINE_PROBES = [16, 64, 256]  # PQ ranked by the codec alone: enough points to show where it levels off


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


def measure_rss(kind: str, path: str | Path, queries_file: Path, n_docs: int) -> dict:
    """Resident bytes per document that loading a saved index and searching 100 queries add to a fresh
    process (ann_rss.py: libraries loaded and warmed up before the first reading)."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, str(Path(__file__).with_name("ann_rss.py")), kind, str(path),
                          str(queries_file)], capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    return {"rss_anon_bytes_per_doc": measured["rss_anon_bytes"] / n_docs,
            "rss_file_bytes_per_doc": measured["rss_file_bytes"] / n_docs}


class Bench:
    def __init__(self, data, truth: np.ndarray, quick: bool, queries_file: Path) -> None:
        self.data = data
        self.queries_file = queries_file  # the 100 queries each memory measurement searches
        self.truth = truth
        self.rows: list[dict] = []
        self.latency_n = 50 if quick else LATENCY_QUERIES

    def record(self, method: str, params: dict, found: np.ndarray, seconds: float, latency: tuple[float, float],
               docs_evaluated: float | None, bytes_per_doc: float, build_s: float, memory: dict | None = None) -> None:
        row = {"method": method, "params": params, "recall@10": recall_at(found, self.truth, 10),
               "recall@100": recall_at(found, self.truth, 100), "qps_batch": len(found) / seconds,
               "p50_ms": latency[0], "p99_ms": latency[1], "docs_evaluated": docs_evaluated,
               "bytes_per_doc": bytes_per_doc, "build_s": build_s, **(memory or {})}
        self.rows.append(row)
        print(f"{method:28s} {str(params):60s} R@10 {row['recall@10']:.4f} R@100 {row['recall@100']:.4f} "
              f"{row['qps_batch']:8.0f} q/s p50 {latency[0]:6.2f} ms evaluated "
              f"{docs_evaluated if docs_evaluated is None else round(docs_evaluated)} B/doc {bytes_per_doc:.0f} "
              f"RSS {row.get('rss_anon_bytes_per_doc', 0):.0f}+{row.get('rss_file_bytes_per_doc', 0):.0f}", flush=True)

    def found(self, index, result) -> np.ndarray:
        """Result rows as document numbers (IVF and HI² store rows in cluster order)."""
        row_to_doc = np.array([int(i[1:]) for i in index.ids], dtype=np.int64)
        return np.where(result.positions >= 0, row_to_doc[np.maximum(result.positions, 0)], -1)


def flagstone_methods(bench: Bench, quick: bool, doc_terms, query_terms) -> dict:
    from flagstone.index import load
    from flagstone.index.flat import FlatIndex
    from flagstone.index.hi2 import HI2Index
    from flagstone.index.ivf import IVFIndex
    from flagstone.models.embeddings import Embeddings

    d = bench.data
    dim = d.doc_vectors.shape[1]
    probes = PROBES if not quick else [16, 64]
    pq_probes = PQ_PROBES if not quick else [16, 64]
    # (name, constructor, sweep); PQ with refinement is also searched without it (the same codes)
    configs = [("flagstone-flat", lambda: FlatIndex(dim), [None]),
               ("flagstone-ivf", lambda: IVFIndex(dim), [None] + probes),
               ("flagstone-hi2", lambda: HI2Index(dim), probes),
               ("flagstone-hi2-pq96-refine2", lambda: HI2Index(dim, codec="pq", refine=2), pq_probes),
               ("flagstone-hi2-pq48-refine2", lambda: HI2Index(dim, codec="pq", pq_m=48, refine=2), pq_probes)]
    tuning = {}
    for method, make, sweep in configs:
        start = time.perf_counter()
        index = make()
        if isinstance(index, HI2Index):
            index.add(d.doc_ids, Embeddings(dense=d.doc_vectors, sparse=doc_terms))
            _ = index.postings  # built at first search otherwise; count it as build time
        else:
            index.add(d.doc_ids, d.doc_vectors)
        build_s = time.perf_counter() - start

        def search(idx, queries, terms, n_probe=None):
            kw = {} if n_probe is None else {"n_probe": n_probe}
            if isinstance(idx, HI2Index):
                return idx.search(Embeddings(dense=queries, sparse=terms), K, **kw)
            return idx.search(queries, K, **kw)

        with tempfile.TemporaryDirectory() as tmp:
            # what a deployment holds: the saved index loaded back (refinement vectors memory-mapped)
            index.save(Path(tmp) / "index")
            del index
            memory = measure_rss("flagstone", Path(tmp) / "index", bench.queries_file, len(d.doc_ids))
            index = load(Path(tmp) / "index")
            search(index, d.query_vectors[:8], query_terms.take(np.arange(8)))  # warm-up: compiles the kernels
            variants = [(method, index)]
            if index.refine_store is not None:
                plain = copy.copy(index)
                plain.refine_store = None  # the same codes, ranked by the codec alone
                variants.append((method.replace("-refine2", "-norefine"), plain))
            for name, variant in variants:
                for n_probe in sweep if name == method or quick else NO_REFINE_PROBES:
                    result, seconds, latency = timed(
                        lambda q, t: search(variant, q, t, n_probe), d.query_vectors, query_terms, bench.latency_n)
                    params = variant.params()
                    params = {k: params[k] for k in ("n_lists", "n_probe", "terms_per_doc", "terms_per_query",
                                                     "max_posting", "codec", "pq_m", "refine") if k in params}
                    if n_probe is not None:
                        params["n_probe"] = n_probe
                    elif "n_probe" in params:
                        params["n_probe"] = f"{params['n_probe']} (default)"
                    if name.endswith("-norefine"):
                        params["refine"] = None
                    described = variant.memory()
                    bench.record(name, params, bench.found(variant, result), seconds, latency,
                                 float(result.docs_evaluated.mean()), described["bytes_per_document"], build_s,
                                 {**memory, "bytes_per_doc_on_disk": described["bytes_per_document_on_disk"],
                                  "memory_parts": described["parts"]})
            if method == "flagstone-hi2-pq48-refine2":
                tuning = tune_check(bench, index, query_terms, search)
            del index, variants
    return tuning


def timed(run: Callable, queries: np.ndarray, terms, latency_n: int):
    start = time.perf_counter()
    result = run(queries, terms)
    seconds = time.perf_counter() - start
    latency = single_query_latency(lambda i: run(queries[i : i + 1], terms.take([i])), latency_n)
    return result, seconds, latency


def tune_check(bench: Bench, index, query_terms, search) -> dict:
    """tune(target_recall=0.99) on the first 300 queries; recall and speed measured on the other 700."""
    from flagstone.models.embeddings import Embeddings

    d = bench.data
    tune_n = min(300, len(d.query_vectors) // 3)
    sample = Embeddings(dense=d.query_vectors[:tune_n], sparse=query_terms.take(np.arange(tune_n)))
    start = time.perf_counter()
    chosen = index.tune(sample, target_recall=0.99, k=10)
    tune_s = time.perf_counter() - start
    rest = np.arange(tune_n, len(d.query_vectors))
    start = time.perf_counter()
    result = search(index, d.query_vectors[rest], query_terms.take(rest))
    seconds = time.perf_counter() - start
    found = bench.found(index, result)
    return {"method": "flagstone-hi2-pq48-refine2", "target_recall": 0.99, "tuned_on_queries": tune_n,
            "n_probe": chosen["n_probe"], "refine": chosen["refine"], "refine_tried": chosen["refine_tried"],
            "recall_on_tuning_sample": chosen["recall"], "tune_s": tune_s,
            "held_out_queries": len(rest), "held_out_recall@10": recall_at(found, bench.truth[rest], 10),
            "held_out_qps_batch": len(rest) / seconds}


def faiss_methods(bench: Bench, quick: bool, n_lists: int) -> None:
    import faiss

    d = bench.data
    x, q = d.doc_vectors, d.query_vectors
    dim, n = x.shape[1], len(x)
    probes = PROBES if not quick else [16, 64]
    ef_values = [100, 200, 400] if not quick else [100]
    pq_m = 96

    def build(make):
        start = time.perf_counter()
        index = make()
        if not index.is_trained:
            index.train(x)
        index.add(x)
        return index, time.perf_counter() - start

    def reload(index):
        """The index written, dropped and read back, with the resident memory reading it adds."""
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "index.faiss")
            faiss.write_index(index, path)
            del index
            memory = measure_rss("faiss", path, bench.queries_file, n)
            return faiss.read_index(path), Path(path).stat().st_size / n, memory

    def run(method, index, params, build_s, evaluated, size, memory):
        start = time.perf_counter()
        _, found = index.search(q, K)
        seconds = time.perf_counter() - start
        latency = single_query_latency(lambda i: index.search(q[i : i + 1], K), bench.latency_n)
        bench.record(method, params, found, seconds, latency, evaluated(), size, build_s, memory)

    flat, build_s = build(lambda: faiss.IndexFlatIP(dim))
    flat, size, memory = reload(flat)
    run("faiss-flat", flat, {}, build_s, lambda: float(n), size, memory)
    del flat

    def ivfpq():
        return faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, n_lists, pq_m, 8, faiss.METRIC_INNER_PRODUCT)

    def ivfpq_refine():  # faiss's IndexRefineFlat: exact float32 vectors re-rank k x k_factor PQ candidates
        refine = faiss.IndexRefineFlat(ivfpq())
        refine.k_factor = 2
        return refine

    for method, make in (("faiss-ivfflat", lambda: faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, n_lists,
                                                                       faiss.METRIC_INNER_PRODUCT)),
                         ("faiss-ivfpq", ivfpq), ("faiss-ivfpq-refine2", ivfpq_refine)):
        index, build_s = build(make)
        index, size, memory = reload(index)
        ivf = faiss.extract_index_ivf(index)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(n_lists)])
        for n_probe in probes:
            ivf.nprobe = n_probe
            _, probed = ivf.quantizer.search(q, n_probe)
            params = {"n_lists": n_lists, "n_probe": n_probe} | ({"pq_m": pq_m} if "pq" in method else {})
            params |= {"k_factor": 2} if "refine" in method else {}
            run(method, index, params, build_s, lambda: float(sizes[probed].sum(axis=1).mean()), size, memory)
        del index, ivf
    hnsw, build_s = build(lambda: faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))
    hnsw, size, memory = reload(hnsw)
    for ef in ef_values:
        hnsw.hnsw.efSearch = ef
        faiss.cvar.hnsw_stats.reset()
        _, _ = hnsw.search(q, K)
        ndis = faiss.cvar.hnsw_stats.ndis / len(q)
        run("faiss-hnsw", hnsw, {"M": 32, "efSearch": ef}, build_s, lambda: float(ndis), size, memory)


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
        path = str(Path(tmp) / "h.bin")
        index.save_index(path)
        del index
        size = Path(path).stat().st_size / len(x)

        memory = measure_rss("hnswlib", path, bench.queries_file, len(x))
        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.load_index(path, max_elements=len(x))
    for ef in ([100, 200, 400] if not quick else [100]):
        index.set_ef(ef)
        start = time.perf_counter()
        found, _ = index.knn_query(q, k=K, num_threads=2)
        seconds = time.perf_counter() - start
        latency = single_query_latency(lambda i: index.knn_query(q[i : i + 1], k=K, num_threads=1), bench.latency_n)
        bench.record("hnswlib", {"M": 32, "ef": ef}, found.astype(np.int64), seconds, latency, None, size, build_s,
                     memory)


def scifact_check() -> dict[str, float]:
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.retrieval import evaluate_retrieval
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder
    from flagstone.retrieval.retriever import Retriever

    data = load_beir(SHARED_DATA / "beir" / "scifact", "test")
    embedder = Embedder(show_progress=False)
    out = {}
    for name, index in (("exact", "flat"), ("hi2", "hi2"), ("ivf", "ivf")):  # each kind with its defaults
        retriever = Retriever(embedder, signals=["dense"], cache=EmbeddingCache(), dense_index=index)
        report = evaluate_retrieval(retriever, data, modes=["dense"], k_values=(10,), depth=10)  # depth as before
        out[f"{name}_ndcg@10"] = report.results["dense"].metrics.mean["ndcg@10"]
        if name != "exact":
            params = retriever.indexes["dense"].params()
            out[f"{name}_params"] = {k: v for k, v in params.items() if k != "tuning"}
    return out


def best_at(rows: list[dict], method: str, target: float) -> dict | None:
    """The fastest setting of ``method`` whose recall@10 reaches ``target``."""
    hits = [r for r in rows if r["method"] == method and r["recall@10"] >= target]
    return max(hits, key=lambda r: r["qps_batch"]) if hits else None


def plot(rows: list[dict], path: Path) -> None:
    """Recall@10 against batch q/s per method; marker area proportional to resident bytes per document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.get_cmap("tab20")  # one colour per method (the default cycle repeats after ten)
    for i, method in enumerate(methods):
        pts = sorted((r["recall@10"], r["qps_batch"], resident_per_doc(r)) for r in rows if r["method"] == method)
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, label=method,
                        color=colors(i % 20), linestyle="-" if method.startswith("flagstone") else "--")
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[max(p[2], 1) / 8 for p in pts],
                   color=line.get_color(), alpha=0.6, edgecolors="none")
    ax.set_xlim(0.8, 1.002)  # the useful range; lower-recall points are in ann.md
    ax.set_xlabel("recall@10 against exact search")
    ax.set_ylabel("queries / second (batch, 2 threads)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Recall against speed, 69k real MiniLM embeddings (marker area: resident bytes per document)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def resident_per_doc(row: dict) -> float:
    """Measured resident anonymous bytes per document, or the index's own count where not measured."""
    return row.get("rss_anon_bytes_per_doc", row["bytes_per_doc"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sweep points (a smoke run)")
    parser.add_argument("--docs", type=int, default=None,
                        help="use only the first N documents (a development run; results are not saved)")
    args = parser.parse_args()
    import faiss

    from flagstone.index.ivf import default_n_lists
    from flagstone.retrieval.bm25 import BM25

    faiss.omp_set_num_threads(2)
    data = load_ann_data(show_progress=True)
    if args.docs:
        data.doc_ids, data.doc_texts = data.doc_ids[: args.docs], data.doc_texts[: args.docs]
        data.doc_vectors = data.doc_vectors[: args.docs]
    n, dim = data.doc_vectors.shape
    print(f"{n} documents, {len(data.query_texts)} queries, dim {dim}", flush=True)
    scores = data.query_vectors @ data.doc_vectors.T
    truth = np.argsort(-scores, axis=1)[:, :K]
    bm25 = BM25()
    doc_terms = bm25.fit_transform(data.doc_texts)
    query_terms = bm25.transform_queries(data.query_texts)

    with tempfile.TemporaryDirectory() as tmp:
        queries_file = Path(tmp) / "queries.pkl"
        with queries_file.open("wb") as handle:
            pickle.dump((data.query_vectors[:100], query_terms.take(np.arange(100)), K), handle)
        bench = Bench(data, truth, args.quick, queries_file)
        tuning = flagstone_methods(bench, args.quick, doc_terms, query_terms)
        faiss_methods(bench, args.quick, default_n_lists(n))
        hnswlib_method(bench, args.quick)
    scifact = scifact_check() if not args.docs else {}

    out = {"n_docs": n, "dim": dim, "n_queries": len(data.query_texts), "k": K, "rows": bench.rows,
           "tuning": tuning, "scifact": scifact,
           "memory_method": "RSS: growth of RssAnon / RssFile in a fresh process (libraries loaded and warmed up "
                             "first) from loading the saved index and searching 100 queries (ann_rss.py)"}
    lines = ["| method | params | R@10 | R@100 | q/s batch | p50 ms | p99 ms | docs evaluated | bytes/doc | "
             "RSS anon B/doc | RSS file B/doc | build s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench.rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        evaluated = "n/a" if r["docs_evaluated"] is None else f"{r['docs_evaluated']:.0f}"
        lines.append(f"| {r['method']} | {params} | {r['recall@10']:.4f} | {r['recall@100']:.4f} | "
                     f"{r['qps_batch']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {evaluated} | "
                     f"{r['bytes_per_doc']:.0f} | {r.get('rss_anon_bytes_per_doc', 0):.0f} | "
                     f"{r.get('rss_file_bytes_per_doc', 0):.0f} | {r['build_s']:.1f} |")
    lines.append("")
    lines.append(f"{n} documents x {dim} dims, {len(data.query_texts)} queries, k = {K}. bytes/doc: the index's "
                 "own count of what it keeps in RAM, ids included (Flagstone's refinement vectors and HI²'s "
                 "per-document term lists are on disk, memory-mapped: bytes_per_doc_on_disk in ann.json). RSS: "
                 "measured growth when the saved index is loaded and searched.")
    methods = list(dict.fromkeys(r["method"] for r in bench.rows))
    for target in (0.99, 0.95):
        found = {m: best_at(bench.rows, m, target) for m in methods}
        parts = [f"{m}: " + (f"{r['qps_batch']:.0f} q/s, {r['docs_evaluated'] or 0:.0f} docs evaluated, "
                             f"{r['bytes_per_doc']:.0f} B/doc, RSS {resident_per_doc(r):.0f} B/doc"
                             if r else "not reached") for m, r in found.items()]
        lines.append("")
        lines.append(f"Fastest setting at recall@10 >= {target}: " + "; ".join(parts) + ".")
        out[f"at_recall_{target}"] = found
    hi2, hnsw = best_at(bench.rows, "flagstone-hi2-pq48-refine2", 0.99), best_at(bench.rows, "hnswlib", 0.99)
    if hi2 and hnsw:
        goal = {"qps_ratio": hi2["qps_batch"] / hnsw["qps_batch"],
                "bytes_ratio": hi2["bytes_per_doc"] / hnsw["bytes_per_doc"],
                "rss_ratio": resident_per_doc(hi2) / max(resident_per_doc(hnsw), 1)}
        out["goal_hi2_pq48_refine2_vs_hnswlib"] = goal
        lines.append("")
        lines.append(f"HI² (PQ m=48 + refine 2) against hnswlib at recall@10 >= 0.99: {goal['qps_ratio']:.2f}x the "
                     f"q/s, {goal['bytes_ratio']:.2f}x the bytes/doc, {goal['rss_ratio']:.2f}x the resident "
                     "anonymous memory per document.")
    if tuning:
        lines.append("")
        lines.append(f"tune(target_recall=0.99) on {tuning['tuned_on_queries']} queries chose n_probe "
                     f"{tuning['n_probe']}, refine {tuning.get('refine')} "
                     f"(recall {tuning['recall_on_tuning_sample']:.4f} there, "
                     f"{tuning['tune_s']:.1f} s); on the other {tuning['held_out_queries']} queries: recall@10 "
                     f"{tuning['held_out_recall@10']:.4f}, {tuning['held_out_qps_batch']:.0f} q/s.")
    if scifact:
        lines.append("")
        lines.append(f"SciFact test nDCG@10 with default settings: exact {scifact['exact_ndcg@10']:.4f}, "
                     f"HI² {scifact['hi2_ndcg@10']:.4f} (n_probe {scifact['hi2_params']['n_probe']}), IVF "
                     f"{scifact['ivf_ndcg@10']:.4f} (n_probe {scifact['ivf_params']['n_probe']} of "
                     f"{scifact['ivf_params']['n_lists']}, self-tuned).")
    if args.docs:
        print("\n".join(lines))
        print("(--docs: a development run, results not saved)")
        return 0
    plot(bench.rows, RESULTS / "ann.png")
    save_results("ann", "\n".join(lines), ann=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
