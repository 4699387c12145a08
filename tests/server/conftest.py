from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra (fastapi, uvicorn) is not installed")


class RunningServer:
    """A Flagstone app served by uvicorn on a loopback port, in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve(minilm, tmp_path):
    """Start servers with given settings; all stop at the end of the test."""
    from flagstone.server.app import ServerSettings, create_app

    running = []

    def start(**overrides) -> RunningServer:
        settings = ServerSettings(data_dir=str(overrides.pop("data_dir", tmp_path / "data")), **overrides)
        server = RunningServer(create_app(settings, embedder=minilm))
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def client(serve):
    import httpx

    server = serve()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
