"""Run ``flagstone serve`` as a child process on a loopback port (benchmarks and crash tests use it)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from flagstone.errors import FlagstoneError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server_process(port: int, data_dir: str | os.PathLike, extra_args: Sequence[str] = (), *,
                         timeout: float = 180.0) -> subprocess.Popen:
    """Start the service and return once ``/health`` answers; a server that exits or stays silent raises
    with the end of its output."""
    import httpx

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1")
    log = tempfile.TemporaryFile()  # not a pipe: a chatty server must never block on a full pipe
    process = subprocess.Popen([sys.executable, "-m", "flagstone", "serve", "--port", str(port), "--data-dir",
                                str(data_dir), *extra_args], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise FlagstoneError(f"the server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise FlagstoneError(f"the server did not answer /health within {timeout:.0f} s")
