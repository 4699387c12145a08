"""How much does adding ONE document to a 50,000-document collection cost, in the library and the service?

Corpus: the first 50,000 distinct real questions from ../shared/data (DPR open-domain QA questions, then BEIR
Quora/NQ/HotpotQA test queries), encoded once by the bundled all-MiniLM-L6-v2 into the embedding cache. Each
single-document add is a text not yet in the corpus, so its time includes encoding that one text.

- library: ``Retriever`` (dense flat + BM25, the defaults). "before" is what a retriever without ``add`` has to
  do: ``fit`` the 50,001 documents again (embeddings from the cache); "after" is ``add([id], [text])``.
- service: the FastAPI app in process (``create_app``, one ``flat`` collection), seconds of one POST of one
  document plus the first search after it (where the old service rebuilt its index), minus the median search.

    python benchmarks/incremental.py --phase after            # this checkout
    PYTHONPATH=<old checkout> python benchmarks/incremental.py --phase before --flagstone <old checkout>

Each phase writes its half of benchmarks/results/incremental.json (the other half is kept); ``before`` needs
only ``Retriever.fit`` and the service API, so it runs on commits older than the Retriever lifecycle.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import shutil
import time
from pathlib import Path

from _common import RESULTS, SHARED_DATA, save_results

DOCS = 50_000


def corpus(n: int) -> list[str]:
    """``n + 50`` distinct real questions (the last 50 are the single-document adds)."""
    files = sorted((SHARED_DATA / "qa" / "dpr_open_domain").glob("*.jsonl"))
    files += sorted((SHARED_DATA / "beir_queries_qrels").glob("*/queries.test.jsonl"))
    seen: dict[str, None] = {}
    for file in files:
        for line in file.read_text(encoding="utf-8").split("\n"):  # not splitlines: texts hold U+2028
            if not line.strip():
                continue
            record = json.loads(line)
            text = (record.get("question") or record.get("text") or "").strip()
            if text:
                seen.setdefault(text, None)
    texts = list(seen)
    if len(texts) < n + 50:
        raise SystemExit(f"only {len(texts)} distinct questions under {SHARED_DATA}; need {n + 50}")
    return texts[: n + 50]


def library(texts: list[str], phase: str, adds: int) -> float:
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder
    from flagstone.retrieval.retriever import Retriever

    embedder = Embedder(show_progress=True)
    retriever = Retriever(embedder, cache=EmbeddingCache())
    ids = [f"q{i}" for i in range(DOCS)]
    retriever.fit(ids, texts[:DOCS])
    seconds = []
    for n in range(adds):
        new_id, new_text = f"new{n}", texts[DOCS + n]
        start = time.perf_counter()
        if phase == "before":
            ids.append(new_id)
            retriever.fit(ids, texts[:DOCS] + texts[DOCS : DOCS + n + 1], show_progress=False)
        else:
            retriever.add([new_id], [new_text], show_progress=False)
        seconds.append(time.perf_counter() - start)
        assert new_id in retriever.search([new_text], mode="bm25", k=3).ids[0]
    print(f"library {phase}: {[round(s, 4) for s in seconds]}", file=sys.stderr)
    return statistics.median(seconds)


def service(texts: list[str], adds: int) -> float:
    from fastapi.testclient import TestClient

    from flagstone.models.cache import default_cache_dir
    from flagstone.server.app import ServerSettings, create_app

    # the service keeps its embedding cache under its data folder: this benchmark's own folder, whose cache is a
    # link to the library's, so the service reads the 50,000 embeddings the library part wrote
    data = default_cache_dir() / "benchmark-incremental-service"
    shutil.rmtree(data / "collections", ignore_errors=True)  # only ever written by this benchmark
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "embeddings").exists():
        (data / "embeddings").symlink_to(default_cache_dir() / "embeddings", target_is_directory=True)
    app = create_app(ServerSettings(data_dir=str(data), max_texts=1000, max_body_bytes=64 * 1024 * 1024))
    with TestClient(app) as client:
        assert client.post("/collections", json={"name": "bench"}).status_code == 201
        for lo in range(0, DOCS, 1000):
            docs = [{"id": f"q{i}", "text": texts[i]} for i in range(lo, min(lo + 1000, DOCS))]
            response = client.post("/collections/bench/documents", json={"documents": docs})
            assert response.status_code == 200, response.text
        query = {"query": "who wrote the declaration of independence", "mode": "hybrid", "k": 10}
        client.post("/collections/bench/search", json=query)  # the first build
        plain = []
        for _ in range(5):
            start = time.perf_counter()
            assert client.post("/collections/bench/search", json=query).status_code == 200
            plain.append(time.perf_counter() - start)
        search_seconds = statistics.median(plain)
        seconds = []
        for n in range(adds):
            doc = {"id": f"new{n}", "text": texts[DOCS + n]}
            start = time.perf_counter()
            assert client.post("/collections/bench/documents", json={"documents": [doc]}).status_code == 200
            hits = client.post("/collections/bench/search", json={**query, "query": doc["text"], "k": 3})
            seconds.append(time.perf_counter() - start - search_seconds)
            assert doc["id"] in [h["id"] for h in hits.json()["results"]]
    print(f"service: search {search_seconds:.4f} s; add + search - search: {[round(s, 4) for s in seconds]}",
          file=sys.stderr)
    return statistics.median(seconds)


def _commit(checkout: Path) -> str:
    import subprocess

    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=("before", "after"), required=True)
    parser.add_argument("--adds", type=int, default=None, help="single-document adds timed (default: 3 before, "
                                                                "20 after)")
    parser.add_argument("--flagstone", default=None, help="the checkout whose flagstone package is measured "
                                                          "(default: this one)")
    args = parser.parse_args()
    if args.flagstone:
        sys.path.insert(0, str(Path(args.flagstone).resolve()))
    import flagstone

    adds = args.adds or (3 if args.phase == "before" else 20)
    texts = corpus(DOCS)
    lib = library(texts, args.phase, adds)
    svc = service(texts, adds)
    file = RESULTS / "incremental.json"
    results = json.loads(file.read_text()) if file.is_file() else {}
    results |= {"docs": DOCS, f"library_{args.phase}": round(lib, 5), f"service_{args.phase}": round(svc, 5),
                f"{args.phase}_commit": _commit(Path(flagstone.__file__).parent.parent), f"{args.phase}_adds": adds}
    rows = ["| | before | after | ratio |", "|---|---:|---:|---:|"]
    for what in ("library", "service"):
        b, a = results.get(f"{what}_before"), results.get(f"{what}_after")
        ratio = f"{b / a:,.0f}x" if a and b else ""
        rows.append(f"| {what}: seconds per single-document add into {DOCS:,} | {b if b is not None else ''} | "
                    f"{a if a is not None else ''} | {ratio} |")
    save_results("incremental", "\n".join(rows), incremental=results)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
