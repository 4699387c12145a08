"""Faults the service must survive: a full disk under a write, slow model work saturating the service."""
from __future__ import annotations

import errno
import json
import os

import pytest

from flagstone.server.store import WAL


def _fail_wal_fsync_once(monkeypatch) -> list[int]:
    """The next fsync of a collection's log raises ENOSPC after its line was written (the server runs in this
    process, in a thread, so patching ``os`` here reaches it)."""
    real = os.fsync
    failed: list[int] = []

    def fsync(fd: int) -> None:
        if not failed and os.readlink(f"/proc/self/fd/{fd}").endswith(WAL):
            failed.append(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def test_a_write_on_a_full_disk_gets_507_and_is_never_applied(serve, tmp_path, monkeypatch):
    import httpx

    data = tmp_path / "data"
    server = serve(data_dir=data)
    doc = {"id": "lost", "text": "written while the disk was full"}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/collections", json={"name": "c"}).status_code == 201
        assert client.post("/collections/c/documents", json={"documents": [{"id": "a", "text": "alpha"}]}) \
            .status_code == 200
        failed = _fail_wal_fsync_once(monkeypatch)
        response = client.post("/collections/c/documents", json={"documents": [doc]})
        assert failed and response.status_code == 507, response.text
        assert response.json()["error"]["type"] == "insufficient_storage"
        assert str(data) not in response.text
        assert client.get("/collections/c/documents/lost").status_code == 404
        ok = client.post("/collections/c/documents", json={"documents": [{"id": "b", "text": "beta"}]})
        assert ok.status_code == 200 and ok.json()["documents"] == 2
        hits = client.post("/collections/c/search", json={"query": "written disk full", "mode": "bm25"}).json()
        assert "lost" not in [h["id"] for h in hits["results"]]
    server.stop()
    again = serve(data_dir=data)
    with httpx.Client(base_url=again.url, timeout=60) as client:
        assert client.get("/collections/c/documents/lost").status_code == 404
        assert client.get("/collections/c").json()["documents"] == 2


class HeldReranker:
    """A cross-encoder double whose calls block (on their worker thread, as a slow model would) until the test
    releases them: the pool stays full for as long as the test measures."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()

    def score_pairs(self, pairs):
        import numpy as np

        assert self.release.wait(60)
        return np.arange(len(pairs), dtype=np.float32)


def test_slow_model_work_is_bounded_and_health_stays_fast(serve):
    import concurrent.futures
    import threading
    import time

    import httpx

    server = serve(reranker="slow-double", model_workers=2, model_queue=4, retry_after_s=7)
    service = server.app.state.service
    held = HeldReranker()
    service.heavy["reranker"] = held
    answers: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def rerank(client: httpx.Client) -> None:
        start = time.perf_counter()
        response = client.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
        with lock:
            answers.append((response.status_code, time.perf_counter() - start, response.headers.get("retry-after")))

    try:
        with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            # 45 reranks at once: more than the 40 threads of the default pool that used to run them
            with concurrent.futures.ThreadPoolExecutor(45) as burst:
                for _ in range(45):
                    burst.submit(rerank, client)
                deadline = time.time() + 20
                while len(answers) < 39 and time.time() < deadline:  # the refusals come back first
                    time.sleep(0.01)
                assert service.model_pool.in_flight == 6  # 2 running, 4 waiting: full
                refused = client.post("/ask", json={"question": "q", "collection": "c"})  # shares the pool
                assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
                latencies = []
                for _ in range(200):  # p99 of 200: one scheduler hiccup on a busy machine does not decide it
                    start = time.perf_counter()
                    assert client.get("/health").status_code == 200
                    latencies.append(time.perf_counter() - start)
                assert service.model_pool.in_flight == 6  # measured while saturated
                held.release.set()  # (the finally below, if an assertion stops the test first)
            latencies.sort()
            assert latencies[int(0.99 * len(latencies))] < 0.1, latencies[-5:]
    finally:
        held.release.set()
    statuses = [s for s, _, _ in answers]
    assert statuses.count(200) == 6 and statuses.count(503) == 39, statuses  # 2 running + 4 waiting
    refusals = [(t, retry) for s, t, retry in answers if s == 503]
    assert all(retry == "7" for _, retry in refusals)
    assert max(t for t, _ in refusals) < 1.0  # at once, not after waiting for a model thread


def test_highlights_are_python_code_point_offsets_and_the_schema_says_so(client):
    text = "🙂🙂 A 🧊 common cold, 𝒞old again."  # characters outside the BMP: 2 UTF-16 units each
    client.post("/collections", json={"name": "e"})
    client.post("/collections/e/documents", json={"documents": [{"id": "x", "text": text}]})
    hit = client.post("/collections/e/search", json={"query": "common cold", "mode": "bm25"}).json()["results"][0]
    assert [text[s:e] for s, e in hit["highlights"]] == ["common", "cold"]
    schema = client.get("/openapi.json").json()["paths"]["/collections/{name}/search"]["post"]["responses"]["200"]
    assert "code point" in json.dumps(schema)


def test_deleting_a_repeated_id_counts_it_once(client):
    client.post("/collections", json={"name": "c"})
    client.post("/collections/c/documents", json={"documents": [{"id": "a", "text": "alpha"},
                                                                {"id": "b", "text": "beta"}]})
    gone = client.post("/collections/c/documents/delete", json={"ids": ["a", "a"]})
    assert gone.json() == {"collection": "c", "deleted": 1, "documents": 1}
    gone = client.post("/collections/c/documents/delete", json={"ids": ["b", "b", "nope"], "missing_ok": True})
    assert gone.json() == {"collection": "c", "deleted": 1, "documents": 0}


def test_hybrid_search_with_a_single_candidate_scores_above_zero(client):
    client.post("/collections", json={"name": "one"})
    client.post("/collections/one/documents", json={"documents": [{"id": "a", "text": "zinc shortens colds"}]})
    hit = client.post("/collections/one/search", json={"query": "zinc colds", "mode": "hybrid"}).json()["results"]
    assert len(hit) == 1 and hit[0]["score"] > 0


def test_a_write_into_a_collection_deleted_meanwhile_gets_404(serve):
    import threading

    import httpx

    server = serve()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        client.post("/collections", json={"name": "c"})
        collection = server.app.state.service.collections.get("c")
        embedding, release = threading.Event(), threading.Event()
        real_embed = collection._embed

        def slow_embed(texts):  # the write is past its checks, embedding, when the delete comes
            embedding.set()
            assert release.wait(30)
            real_embed(texts)

        collection._embed = slow_embed
        answer: list[httpx.Response] = []
        writer = threading.Thread(target=lambda: answer.append(
            client.post("/collections/c/documents", json={"documents": [{"id": "a", "text": "alpha"}]})))
        writer.start()
        assert embedding.wait(30)
        assert client.delete("/collections/c").status_code == 200
        release.set()
        writer.join(60)
        assert answer[0].status_code == 404, answer[0].text
        assert answer[0].json()["error"]["type"] == "not_found"
        assert client.get("/collections/c").status_code == 404
