"""Kill -9 the real service in the middle of a stream of writes; every acknowledged write must survive."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn", reason="the server extra is not installed")

from flagstone.server.process import free_port, start_server_process  # noqa: E402 -- after the skip


def start_server(data_dir, port):
    return start_server_process(port, data_dir, ["--threads", "1"], timeout=120)


def test_acknowledged_writes_survive_kill_9(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    acknowledged: list[str] = []
    try:
        assert httpx.post(f"{url}/collections", json={"name": "c"}).status_code == 201

        def writer():
            with httpx.Client(base_url=url, timeout=10) as client:
                for n in range(10_000):
                    doc = {"id": f"doc{n}", "text": f"record {n} keyword{n} in the log", "metadata": {"n": n}}
                    try:
                        response = client.post("/collections/c/documents", json={"documents": [doc]})
                    except httpx.TransportError:
                        return
                    if response.status_code == 200:
                        acknowledged.append(doc["id"])

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acknowledged) < 25:
            time.sleep(0.01)
            assert thread.is_alive()
        os.kill(server.pid, signal.SIGKILL)  # mid-stream: a request is most likely in flight
        server.wait(timeout=10)
        thread.join(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()

    server = start_server(tmp_path, port)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            stored = client.get("/collections/c").json()["documents"]
            # every acknowledged write is there; at most the one in flight at the kill is there too
            assert len(acknowledged) <= stored <= len(acknowledged) + 1
            for doc_id in acknowledged:
                assert client.get(f"/collections/c/documents/{doc_id}").status_code == 200
            # the index agrees with the stored documents
            hits = client.post("/collections/c/search", json={"query": "record log", "mode": "bm25",
                                                             "k": stored}).json()["results"]
            assert len(hits) == stored
            for n in (0, len(acknowledged) - 1):
                top = client.post("/collections/c/search", json={"query": f"keyword{n}", "mode": "bm25",
                                                                "k": 1}).json()["results"]
                assert top[0]["id"] == f"doc{n}"
            # and the service keeps taking writes after recovery
            more = client.post("/collections/c/documents", json={"documents": [{"id": "after", "text": "later"}]})
            assert more.status_code == 200
    finally:
        server.kill()
        server.wait(timeout=10)
