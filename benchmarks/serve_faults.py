"""Does the service stay correct and responsive under bad clients and crashes? (issue 18)

Starts `flagstone serve` (the bundled MiniLM, one torch thread) on a loopback port with a temporary data folder
and runs, in order:

1. a mix of good and bad requests (lone surrogates, deeply nested metadata, NaN, wrong types, over-long texts,
   unknown collections) interleaved with good writes and searches: every bad one must get a 4xx, every good one
   a 2xx (``innocent_failed`` counts good ones that did not, ``status_5xx`` every 5xx);
2. a ~200 MB chunked upload from a generator while the server's RSS is sampled from /proc: it must be refused
   (413) while reading, without the body landing in memory (``upload_rss_growth_mb``);
3. saturation: concurrent /v1/embeddings clients (there is no reranker with the bundled model) while /health
   is timed (``health_p99_ms``);
4. kill -9 in the middle of a stream of writes, restart, and count acknowledged writes that are gone
   (``writes_lost``).

    python benchmarks/serve_faults.py [--saturate-s 10] [--clients 24]

Writes benchmarks/results/serve_faults.{json,md}. Takes a few minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import save_results

from flagstone.server.process import free_port, start_server_process


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Tally:
    """Counts answers: every request, every 5xx, and good requests that did not succeed."""

    def __init__(self) -> None:
        self.requests = self.status_5xx = self.innocent_failed = self.bad_accepted = 0
        self.lock = threading.Lock()
        self.examples: list[str] = []

    def record(self, what: str, good: bool, status: int | None) -> None:
        with self.lock:
            self.requests += 1
            if status is not None and status >= 500:
                self.status_5xx += 1
            failed_good = good and (status is None or not 200 <= status < 300)
            bad_passed = not good and (status is None or not 400 <= status < 500)
            self.innocent_failed += failed_good
            self.bad_accepted += bad_passed
            if (failed_good or bad_passed) and len(self.examples) < 10:
                self.examples.append(f"{what}: {status}")


def send(client, tally: Tally, what: str, good: bool, method: str, path: str, **kwargs) -> int | None:
    import httpx

    try:
        status = client.request(method, path, **kwargs).status_code
    except httpx.TransportError:
        status = None
    tally.record(what, good, status)
    return status


def bad_and_good_mix(client, tally: Tally, rounds: int) -> None:
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    raw = {"content": None, "headers": {"content-type": "application/json"}}
    bad = [
        ("lone surrogate text", "POST", "/collections/c/documents",
         dict(raw, content=b'{"documents": [{"id": "s", "text": "a \\ud800 b"}]}')),
        ("lone surrogate query", "POST", "/collections/c/search", dict(raw, content=b'{"query": "\\udfff"}')),
        ("lone surrogate embed", "POST", "/v1/embeddings", dict(raw, content=b'{"input": ["x\\ud83d"]}')),
        ("deep metadata", "POST", "/collections/c/documents",
         {"json": {"documents": [{"id": "d", "text": "t", "metadata": deep}]}}),
        ("NaN metadata", "POST", "/collections/c/documents",
         dict(raw, content=b'{"documents": [{"id": "n", "text": "t", "metadata": {"v": NaN}}]}')),
        ("string k", "POST", "/collections/c/search", {"json": {"query": "q", "k": "10"}}),
        ("huge k", "POST", "/collections/c/search", {"json": {"query": "q", "k": 10**9}}),
        ("over-long text", "POST", "/v1/embeddings", {"json": {"input": ["x" * 50_000]}}),
        ("empty query", "POST", "/collections/c/search", {"json": {"query": "  "}}),
        ("unknown collection", "POST", "/collections/nope/search", {"json": {"query": "q"}}),
        ("broken JSON", "POST", "/collections/c/documents", dict(raw, content=b'{"documents": [')),
        ("rerank without a reranker", "POST", "/rerank", {"json": {"query": "q", "documents": ["a"]}}),
    ]
    for r in range(rounds):
        for n, (what, method, path, kwargs) in enumerate(bad):
            send(client, tally, what, False, method, path, **kwargs)
            doc = {"id": f"mix{r}-{n}", "text": f"good document {r} {n} about tea and stars"}
            send(client, tally, "good write", True, "POST", "/collections/c/documents", json={"documents": [doc]})
            send(client, tally, "good search", True, "POST", "/collections/c/search",
                 json={"query": "tea stars", "k": 3})


def huge_upload(url: str, pid: int, tally: Tally, total_mb: int = 200) -> dict:
    import httpx

    chunk = b"x" * (1 << 20)
    sent = [0]

    def body() -> Iterator[bytes]:
        yield b'{"documents": [{"id": "big", "text": "'
        for _ in range(total_mb):
            sent[0] += len(chunk)
            yield chunk
        yield b'"}]}'

    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        status: int | None = httpx.post(f"{url}/collections/c/documents", content=body(),
                                        headers={"content-type": "application/json"}, timeout=120).status_code
    except httpx.TransportError:  # the server may close the connection after answering 413
        status = None
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    # the guard answers 413 and closes the connection while the body still streams in: the client may then see
    # the closed connection before the answer; either way the body was refused, so both count as a 4xx here
    tally.record("200 MB chunked upload", False, status if status is not None else 413)
    return {"upload_status": status if status is not None else "connection closed while sending", "upload_sent_mb": round(sent[0] / 2**20, 1),
            "upload_seconds": round(elapsed, 2), "upload_rss_growth_mb": round(peak[0] - before, 1)}


def saturate(url: str, tally: Tally, seconds: float, clients: int) -> dict:
    import httpx

    stop = time.time() + seconds
    texts = [f"sentence number {i} about the service under load" for i in range(64)]
    embedded = [0]

    def embed_client() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.time() < stop:
                if send(client, tally, "saturating embed", True, "POST", "/v1/embeddings",
                        json={"input": texts}) == 200:
                    embedded[0] += len(texts)

    latencies: list[float] = []
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(embed_client)
        time.sleep(1.0)  # let the queue fill
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.time() < stop:
                start = time.perf_counter()
                send(client, tally, "health under load", True, "GET", "/health")
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)
    latencies.sort()
    return {"health_samples": len(latencies), "health_p50_ms": round(1000 * statistics.median(latencies), 1),
            "health_p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "saturation_texts_per_s": round(embedded[0] / seconds, 1)}


def kill_during_writes(data_dir: Path, tally: Tally, seconds: float) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server_process(port, data_dir, ["--threads", "1"], timeout=180)
    acknowledged: list[str] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        send(client, tally, "create k", True, "POST", "/collections", json={"name": "k"})

    def writer() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in range(100_000):
                doc = {"id": f"k{n}", "text": f"record {n} written before the kill", "metadata": {"n": n}}
                try:
                    response = client.post("/collections/k/documents", json={"documents": [doc]})
                except httpx.TransportError:
                    return  # killed: this write was never acknowledged
                if response.status_code == 200:
                    acknowledged.append(doc["id"])

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(seconds)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    thread.join(60)
    server = start_server_process(port, data_dir, ["--threads", "1"], timeout=180)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            lost = [i for i in acknowledged
                    if send(client, tally, "read after restart", True, "GET", f"/collections/k/documents/{i}") != 200]
    finally:
        server.terminate()
        server.wait(30)
    return {"writes_acknowledged": len(acknowledged), "writes_lost": len(lost)}


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saturate-s", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the bad/good request mix")
    parser.add_argument("--kill-after-s", type=float, default=5.0)
    args = parser.parse_args()

    tally = Tally()
    results: dict = {"settings": vars(args)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server_process(port, Path(tmp) / "data", ["--threads", "1"], timeout=180)
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                send(client, tally, "create c", True, "POST", "/collections", json={"name": "c"})
                bad_and_good_mix(client, tally, args.rounds)
            results.update(huge_upload(url, server.pid, tally))
            results.update(saturate(url, tally, args.saturate_s, args.clients))
        finally:
            server.terminate()
            server.wait(30)
        results.update(kill_during_writes(Path(tmp) / "crash", tally, args.kill_after_s))
    results.update(requests=tally.requests, status_5xx=tally.status_5xx, innocent_failed=tally.innocent_failed,
                   bad_accepted=tally.bad_accepted, failure_examples=tally.examples,
                   seconds=round(time.perf_counter() - started, 1))
    keys = ("requests", "innocent_failed", "bad_accepted", "status_5xx", "writes_acknowledged", "writes_lost",
            "health_p50_ms", "health_p99_ms", "saturation_texts_per_s", "upload_status", "upload_sent_mb",
            "upload_rss_growth_mb")
    table = ["# serve_faults", "", "| measure | value |", "|---|---|"]
    table += [f"| {k} | {results[k]} |" for k in keys]
    save_results("serve_faults", "\n".join(table), serve_faults=results)
    print(json.dumps({k: results[k] for k in keys}))


if __name__ == "__main__":
    main()
