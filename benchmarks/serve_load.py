"""How does the service hold up under concurrent clients? Start `flagstone serve` on a loopback port, load a
collection, then (1) measure offline encode throughput in this process, (2) embedding throughput through the
service with concurrent clients, (3) a fixed-duration mix of search and embed calls.

    python benchmarks/serve_load.py [--clients 16] [--duration 60] [--docs 1000] [--api-key]

Clients are asyncio tasks in this process (loopback only, bounded in count and time); the server runs in
its own process with the same number of torch threads the offline encode uses. The corpus is Python's own
docstrings (present on every machine). Writes benchmarks/results/serve_load.{json,md}; with --api-key the
server requires a bearer key that every client sends, and the results go to serve_load_keys.{json,md}.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save_results

QUERIES = ["how do I read a file", "parse command line arguments", "sort a list in place", "open a socket",
           "compress data with zlib", "format a date", "regular expression match", "random number generator",
           "decode json", "temporary directory", "thread pool", "hash a password", "copy a tree of files"]


async def embed_throughput(url: str, texts: list[str], clients: int, per_request: int,
                           headers: dict[str, str]) -> float:
    """Texts per second when ``clients`` tasks embed ``texts`` in requests of ``per_request`` texts."""
    import httpx

    batches = [texts[i:i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)

    async def worker(client):
        while not queue.empty():
            batch = queue.get_nowait()
            response = await client.post("/v1/embeddings", json={"input": batch})
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return len(texts) / (time.perf_counter() - start)


async def mixed_load(url: str, texts: list[str], clients: int, duration: float, search_share: float,
                     headers: dict[str, str]) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    errors = 0
    kinds = {"search": 0, "embed": 0}
    stop_at = time.perf_counter() + duration
    rng = random.Random(0)

    async def worker(client):
        nonlocal errors
        while time.perf_counter() < stop_at:
            if rng.random() < search_share:
                kind, path = "search", "/collections/docs/search"
                body = {"query": rng.choice(QUERIES), "mode": rng.choice(["dense", "bm25", "hybrid"]), "k": 10}
            else:
                kind, path = "embed", "/v1/embeddings"
                body = {"input": rng.sample(texts, 4)}
            start = time.perf_counter()
            try:
                response = await client.post(path, json=body)
                statuses.append(response.status_code)
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            kinds[kind] += 1

    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers,
                                 limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(statuses), "errors": errors + sum(s >= 400 for s in statuses),
            "status_5xx": sum(s >= 500 for s in statuses), "rps": len(statuses) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "by_kind": kinds,
            "elapsed_s": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (at most 64)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load (at most 600)")
    parser.add_argument("--docs", type=int, default=1000, help="documents in the collection")
    parser.add_argument("--embed-texts", type=int, default=1024, help="texts for the throughput comparison")
    parser.add_argument("--per-request", type=int, default=8, help="texts per embedding request")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, offline and in the server")
    parser.add_argument("--max-batch", type=int, default=256, help="the server's encoder batch limit")
    parser.add_argument("--search-share", type=float, default=0.7, help="share of search calls in the mix")
    parser.add_argument("--api-key", action="store_true",
                        help="run the server with an API key and send it with every request")
    args = parser.parse_args()
    args.clients = max(1, min(args.clients, 64))
    args.duration = max(1.0, min(args.duration, 600.0))

    import httpx
    import torch

    from flagstone.corpora import python_docstrings
    from flagstone.models.embedder import Embedder
    from flagstone.server.process import free_port, start_server_process

    torch.set_num_threads(args.threads)
    ids, docs = python_docstrings(max(args.docs, args.embed_texts))
    texts = docs[: args.embed_texts]
    with tempfile.TemporaryDirectory() as data_dir:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        key_args, headers = [], {}
        if args.api_key:
            key_file = Path(data_dir) / "keys.txt"
            key_file.write_text("benchmark-key\n")
            key_args, headers = ["--api-keys-file", str(key_file)], {"Authorization": "Bearer benchmark-key"}
        server = start_server_process(port, str(Path(data_dir) / "server"),
                                      ["--threads", str(args.threads), "--max-texts", "256",
                                       "--max-batch", str(args.max_batch), *key_args])
        try:
            httpx.post(f"{url}/collections", json={"name": "docs"}, headers=headers).raise_for_status()
            for start in range(0, args.docs, 200):
                body = {"documents": [{"id": i, "text": t} for i, t in zip(ids[start:start + 200],
                                                                              docs[start:start + 200])]}
                httpx.post(f"{url}/collections/docs/documents", json=body, timeout=600,
                           headers=headers).raise_for_status()
            httpx.post(f"{url}/collections/docs/search", json={"query": "warm up"}, timeout=600,
                       headers=headers).raise_for_status()

            # offline and through the service, interleaved twice (the machine is noisy), best of each
            embedder = Embedder(show_progress=False)
            embedder.encode(texts[:64])
            offline, offline_shuffled, service = [], [], []
            shuffled = random.Random(0).sample(texts, len(texts))
            for _ in range(2):
                start = time.perf_counter()
                embedder.encode(texts)
                offline.append(len(texts) / (time.perf_counter() - start))
                # what padding costs: the same texts offline in random batches of the server's size
                start = time.perf_counter()
                for i in range(0, len(shuffled), args.max_batch):
                    embedder.encode(shuffled[i:i + args.max_batch])
                offline_shuffled.append(len(texts) / (time.perf_counter() - start))
                service.append(asyncio.run(embed_throughput(url, texts, args.clients, args.per_request, headers)))
            del embedder
            mixed = asyncio.run(mixed_load(url, texts, args.clients, args.duration, args.search_share, headers))
        finally:
            server.terminate()
            server.wait(timeout=30)

    ratio = max(service) / max(offline)
    results = {"clients": args.clients, "duration_s": args.duration, "requests": mixed["requests"],
               "errors": mixed["errors"], "status_5xx": mixed["status_5xx"], "rps": mixed["rps"],
               "p50_ms": mixed["p50_ms"], "p99_ms": mixed["p99_ms"], "embed_throughput_ratio_vs_offline": ratio,
               "details": {"offline_texts_per_s": offline, "service_texts_per_s": service,
                           "offline_random_batches_texts_per_s": offline_shuffled, "max_batch": args.max_batch,
                           "texts_per_request": args.per_request, "mix": mixed["by_kind"],
                           "search_share": args.search_share, "documents": args.docs, "threads": args.threads,
                           "api_key": args.api_key,
                           "corpus": "Python standard library docstrings", "model": "all-MiniLM-L6-v2",
                           "machine": "2 CPU cores; server and clients on the same machine"}}
    lines = [
        "| clients | duration s | requests | errors | 5xx | req/s | p50 ms | p99 ms | embed throughput vs offline |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {args.clients} | {args.duration:.0f} | {mixed['requests']} | {mixed['errors']} | {mixed['status_5xx']} | "
        f"{mixed['rps']:.1f} | {mixed['p50_ms']:.0f} | {mixed['p99_ms']:.0f} | {ratio:.2f} |",
        "",
        f"Embedding {len(texts)} docstrings: offline {max(offline):.0f} texts/s, through the service "
        f"{max(service):.0f} texts/s ({args.clients} clients x {args.per_request} texts per request, best of 2); "
        f"offline in random batches of {args.max_batch}: {max(offline_shuffled):.0f} texts/s. "
        f"Mixed load: {args.search_share:.0%} searches (dense/BM25/hybrid over {args.docs} docs), the rest "
        f"4-text embeddings.",
    ]
    name = "serve_load_keys" if args.api_key else "serve_load"
    save_results(name, "\n".join(lines), **{name: results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
