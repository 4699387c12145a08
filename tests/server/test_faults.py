"""Faults the service must survive: a full disk under a write, slow model work saturating the service."""
from __future__ import annotations

import errno
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
