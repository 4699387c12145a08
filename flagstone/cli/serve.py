"""The ``flagstone serve`` command: run the HTTP service."""
from __future__ import annotations

import argparse

from flagstone.cli._common import (
    EPILOG,
    add_backend_options,
    causal_lm_name,
    check_argument,
    check_with,
    existing_file,
    existing_folder,
    http_url,
    model_name,
    non_negative_float,
    non_negative_int,
    output_folder,
    port,
    positive_float,
    positive_int,
)
from flagstone.errors import FlagstoneError, require_extra
from flagstone.server.settings import SERVICE_BACKEND


def add_parsers(sub, epilog: str = EPILOG) -> None:
    p = sub.add_parser(
        "serve", help="run the HTTP service: embeddings, collections, search, rerank, ask, a search page",
        description="Serve Flagstone over HTTP (FastAPI + uvicorn). OpenAPI spec at /openapi.json, docs at /docs, "
                    "a search page at /, Prometheus metrics at /metrics. Collections and their write-ahead logs "
                    "live under --data-dir; an acknowledged write survives a crash.", epilog=epilog)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="(default: 8000)")
    p.add_argument("--data-dir", type=output_folder, default="flagstone-data",
                   help="collections and caches (default: ./flagstone-data)")
    p.add_argument("--model", type=model_name, default=None,
                   help="embedding model (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--reranker", type=model_name, default=None,
                   help="cross-encoder for /rerank and reranked search (default: none)")
    # the fastest exact backend (float32 vectors equal to torch's to 1e-5) measured by benchmarks/encode.py
    add_backend_options(p, backend=SERVICE_BACKEND)
    p.add_argument("--generator", default="smollm2-135m-instruct",
                   help="generator for /ask, loaded on first use (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--generator-base-url", type=http_url, default=None,
                   help="OpenAI-compatible server for /ask instead")
    p.add_argument("--api-keys-file", type=existing_file, default=None,
                   help="require a bearer token from this file (one per line); $FLAGSTONE_API_KEYS adds more")
    p.add_argument("--public-metrics", action="store_true",
                   help="serve /metrics without a key, for scrapers that cannot send one (metric labels name "
                        "collections); every other endpoint but /health still needs a key")
    p.add_argument("--max-texts", type=positive_int, default=256, help="texts per request (default: 256)")
    p.add_argument("--max-chars", type=positive_int, default=20000, help="characters per text (default: 20000)")
    p.add_argument("--max-body-mb", type=positive_float, default=8.0,
                   help="request body limit in MB, enforced while the body is read, chunked or not (default: 8)")
    p.add_argument("--body-timeout", type=positive_float, default=60.0,
                   help="seconds a request body may take to arrive; slower ones get 408 (default: 60)")
    p.add_argument("--max-batch", type=positive_int, default=256,
                   help="texts per encoder batch; the encoder sorts a batch by length, so bigger batches pad "
                        "less (default: 256)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="how long a request may wait for others to share its batch (default: 5)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--model-workers", type=positive_int, default=2,
                   help="rerank / ask calls run at once, on their own threads (default: 2)")
    p.add_argument("--model-queue", type=non_negative_int, default=16,
                   help="rerank / ask calls that may wait for those threads; more get 503 with Retry-After "
                        "at once (default: 16)")
    g = p.add_argument_group("collections on Ray shard actors")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="back collections by shard actors on a Ray cluster, searched by scatter-gather; ADDRESS "
                        "joins a cluster (e.g. auto, ray://head:10001); without it a local cluster is started. "
                        "Sharded collections are read-only (writes get 409 read_only) and every search response "
                        "says which shards answered")
    g.add_argument("--sharded", type=sharded_collection, action="append", default=[], metavar="NAME=FOLDER",
                   help="with --ray: serve a sharded retriever folder as collection NAME (repeatable)")
    g.add_argument("--shards", type=positive_int, default=None,
                   help="with --ray: at start-up, build every stored collection with documents into this many "
                        "shards (under --data-dir/sharded) and serve it from shard actors")
    g.add_argument("--replicas", type=positive_int, default=1,
                   help="with --ray: actors per shard; a call one does not answer moves to the next (default: 1)")
    g.add_argument("--shard-deadline", type=positive_float, default=30.0,
                   help="with --ray: seconds a shard has to answer before its next replica is asked, or the "
                        "search fails with 503 naming it (default: 30)")
    check_with(p, _check_serve)


def sharded_collection(text: str) -> tuple[str, str]:
    """NAME=FOLDER, the folder an existing one."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=FOLDER")
    return name, existing_folder(folder)


def _check_serve(args: argparse.Namespace) -> None:
    # the generator loads on the first /ask; a misspelt name should stop the service now, not then
    if args.generator_base_url is None:
        check_argument("--generator", args.generator, causal_lm_name)
    if args.ray is None and (args.sharded or args.shards or args.replicas != 1):
        raise FlagstoneError("--sharded, --shards and --replicas serve collections on Ray shard actors: add --ray")
    names = [name for name, _ in args.sharded]
    if len(set(names)) != len(names):
        raise FlagstoneError("--sharded: the same collection name is given twice")


def cmd_serve(args: argparse.Namespace) -> int:
    require_extra("server", ("fastapi", "uvicorn", "prometheus_client", "orjson"), "the service needs")
    import uvicorn

    from flagstone.server.app import ServerSettings, create_app, read_api_keys

    settings = ServerSettings(
        data_dir=args.data_dir, model=args.model, backend=args.backend, precision=args.precision,
        reranker=args.reranker, generator=args.generator,
        generator_base_url=args.generator_base_url, api_keys=read_api_keys(args.api_keys_file),
        public_metrics=args.public_metrics, body_timeout_s=args.body_timeout,
        max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, threads=args.threads,
        model_workers=args.model_workers, model_queue=args.model_queue, ray=args.ray, sharded=dict(args.sharded),
        shards=args.shards, replicas=args.replicas, shard_deadline_s=args.shard_deadline)
    app = create_app(settings)
    sharded = list(settings.sharded) + ([f"every stored collection in {args.shards} shards"] if args.shards else [])
    # the default backend depends on which extras are installed, so the start-up line always names it
    print(f"Flagstone serving on http://{args.host}:{args.port} (data in {args.data_dir}; embedding on "
          f"{settings.backend} {settings.precision}{', API keys required' if settings.api_keys else ''}"
          f"{', read-only on Ray shard actors: ' + '; '.join(sharded) if sharded else ''})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS = {"serve": cmd_serve}
