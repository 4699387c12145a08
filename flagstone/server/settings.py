"""The service's settings and API-key loading (no FastAPI needed to build them)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def fastest_exact_backend() -> str:
    """The service's default embedding backend: the fastest one whose float32 vectors equal torch's. OpenVINO
    float32 encoded 1.23x as fast as torch float32 with vectors equal to 2.2e-7 (benchmarks/encode.py, quiet
    run, README "Inference backends"); without the openvino extra installed, torch."""
    from flagstone.models.backends import backend_installed

    return "openvino" if backend_installed("openvino") else "torch"


SERVICE_BACKEND = fastest_exact_backend()


@dataclass
class ServerSettings:
    data_dir: str = "flagstone-data"
    model: str | None = None  # embedding model (default: the bundled all-MiniLM-L6-v2)
    # the embedder runs on the fastest backend whose float32 vectors equal torch's to 1e-5
    # (benchmarks/encode.py, README "Inference backends"); any backend and precision can be chosen instead
    backend: str = SERVICE_BACKEND
    precision: str = "float32"
    reranker: str | None = None  # cross-encoder for /rerank and search reranking
    generator: str = "smollm2-135m-instruct"  # loaded on the first /ask
    generator_base_url: str | None = None
    api_keys: frozenset[str] = field(default_factory=frozenset)  # if any, all but /health and / need one
    public_metrics: bool = False  # /metrics without a key (for scrapers that cannot send one; names collections)
    max_texts: int = 256  # per request
    max_chars: int = 20_000  # per text
    max_body_bytes: int = 8 * 1024 * 1024  # enforced while the body arrives, chunked or not
    body_timeout_s: float = 60.0  # the whole body must arrive within this long of the app starting to read it
    max_k: int = 1000
    max_batch: int = 256  # larger batches sort by length over more texts: less padding (see serve_load)
    max_wait_ms: float = 5.0
    threads: int | None = None
    model_workers: int = 2  # rerank / ask calls running at once, on their own threads (see server.pool)
    model_queue: int = 16  # more that may wait; beyond that a 503 with Retry-After at once
    retry_after_s: int = 5
    # serve --ray: None = no Ray; "" = a local cluster; else the address to join
    ray: str | None = None
    sharded: dict[str, str] = field(default_factory=dict)  # collection name -> sharded retriever folder
    shards: int | None = None  # with ray: stored collections sharded into this many shards at start-up
    replicas: int = 1  # shard actors per shard
    shard_deadline_s: float = 30.0  # a shard call not answered by then moves to the next replica

    def __post_init__(self) -> None:
        if self.ray is None and (self.sharded or self.shards):
            raise ValueError("sharded collections need Ray: set ray (\"\" starts a local cluster)")
        if self.replicas < 1 or self.shard_deadline_s <= 0 or (self.shards is not None and self.shards < 1):
            raise ValueError("replicas and shards must be at least 1 and shard_deadline_s positive")


def read_api_keys(path: str | None = None, env: str = "FLAGSTONE_API_KEYS") -> frozenset[str]:
    """Keys from a file (one per line, # comments) and/or a comma-separated environment variable."""
    keys: set[str] = set()
    if path:
        from flagstone._io import read_text

        keys |= {ln.strip() for ln in read_text(path, "API key file").splitlines()
                 if ln.strip() and not ln.strip().startswith("#")}
    keys |= {k.strip() for k in os.environ.get(env, "").split(",") if k.strip()}
    return frozenset(keys)
