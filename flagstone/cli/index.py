"""The ``flagstone index`` commands: build, search, describe and verify a saved retriever folder (dense index)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flagstone.cli._common import (
    EPILOG,
    _add_model_options,
    _add_probe_options,
    _apply_probe_options,
    _cache,
    _embedder,
    _read_texts,
    _snippet,
    add_backend_options,
    existing_folder,
    existing_path,
    output_folder,
    positive_int,
)
from flagstone.errors import DataError, FlagstoneError

TUNE_SAMPLE = 500  # queries (or documents standing in for them) that --target-recall measures


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="build a saved dense index (flat, IVF, HI²), search and verify it",
                       description="Build, inspect, search and verify a saved dense index.", epilog=EPILOG)
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="encode a corpus and save an index folder",
                        description="Encode a corpus (BEIR folder, .jsonl or .txt) and save an index folder: the "
                                    "dense index, the BM25 term model (HI² query terms) and the documents.",
                        epilog=EPILOG)
    b.add_argument("corpus", type=existing_path,
                   help="a BEIR folder, a corpus .jsonl (_id/id, title, text) or a .txt file")
    b.add_argument("-o", "--output", type=output_folder, required=True,
                   help="index folder to write (written beside, then renamed)")
    b.add_argument("--overwrite", action="store_true", help="replace an index folder that already exists there")
    b.add_argument("--index", choices=("flat", "ivf", "hi2"), default="hi2", help="index type (default: hi2)")
    b.add_argument("--codec", choices=("flat", "fp16", "pq"), default="flat",
                   help="vector storage: float32, float16 or product quantisation (default: flat)")
    b.add_argument("--refine", type=positive_int, default=None, metavar="F",
                   help="with --codec pq or fp16: re-rank k x F candidates by exact float32 vectors, saved with the "
                        "index and memory-mapped from disk (default: none)")
    b.add_argument("--n-lists", type=positive_int, default=None, help="k-means clusters (default: about 4 sqrt(N))")
    _add_probe_options(b, tunes="measured on the corpus's queries.jsonl (a BEIR folder) or else on "
                                f"{TUNE_SAMPLE} of its documents used as queries, and saved with the index")
    b.add_argument("--terms-per-doc", type=positive_int, default=15,
                   help="HI²: salient terms per document (default: 15)")
    _add_model_options(b)
    s_ = isub.add_parser("search", help="search a saved index folder",
                         description="Search a folder written by `flagstone index build`.", epilog=EPILOG)
    s_.add_argument("folder", type=existing_folder, help="index folder")
    s_.add_argument("-q", "--query", action="append", required=True, help="a query (repeatable)")
    s_.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    _add_probe_options(s_, tunes="from the measurements saved by `index build --target-recall`")
    s_.add_argument("--mmap", action="store_true",
                    help="memory-map the vectors instead of reading them (still checksummed unless --no-verify)")
    _add_no_verify(s_)
    add_backend_options(s_)
    s_.add_argument("--quiet", action="store_true", help="no progress bars")
    d = isub.add_parser("describe", help="print an index folder's settings and size",
                        description="Print an index folder's settings, size and memory per document.")
    d.add_argument("folder", type=existing_folder, help="index folder")
    _add_no_verify(d)
    v = isub.add_parser("verify", help="check a saved folder's checksums and files",
                        description="Check a folder written by `flagstone index build` (or any saved retriever "
                                    "or index folder): the SHA-256 of every index array, the .npy headers, the "
                                    "manifests and the JSON files. Prints one line per file checked; exits with "
                                    "status 2 and names the first bad file otherwise.")
    v.add_argument("folder", type=existing_folder, help="index folder, or a single index (a folder with a CURRENT file)")


def _add_no_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-verify", action="store_true",
                   help="skip the SHA-256 checksum check of the index files when loading (faster for very large "
                        "indexes; damage inside the vectors then goes unnoticed)")


def cmd_index(args: argparse.Namespace) -> int:
    if args.index_command is None:
        raise FlagstoneError("choose an action: flagstone index build|search|describe|verify (see --help)")
    actions = {"build": _index_build, "search": _index_search, "describe": _index_describe, "verify": _index_verify}
    return actions[args.index_command](args)


def _index_build(args: argparse.Namespace) -> int:
    from flagstone.retrieval.retriever import DENSE_INDEXES, Retriever, check_output_folder

    out = Path(args.output)
    check_output_folder(out, overwrite=args.overwrite)  # before any encoding
    if args.index == "flat" and (args.n_probe is not None or args.target_recall is not None):
        raise FlagstoneError("--n-probe and --target-recall apply to --index ivf or hi2 (flat search is exact)")
    if args.refine is not None and args.codec == "flat":
        raise FlagstoneError("--refine re-ranks compressed vectors: use it with --codec pq or fp16")
    ids, texts = _read_texts(args.corpus)
    embedder = _embedder(args)
    knobs: dict[str, object] = {"codec": args.codec, "refine": args.refine}
    if args.index != "flat":
        knobs |= {"n_lists": args.n_lists, "n_probe": args.n_probe}
    if args.index == "hi2":
        knobs["terms_per_doc"] = args.terms_per_doc
    index = DENSE_INDEXES[args.index](embedder.dim, **knobs)
    retriever = Retriever(embedder, signals=["dense"], cache=_cache(args), dense_index=index)
    retriever.add(ids, texts)
    tuning = _apply_probe_options(index, args, lambda: _tuning_queries(args.corpus, texts),
                                  lambda queries, target: retriever.tune_dense(queries, target_recall=target))
    if tuning is not None:
        verdict = ">=" if tuning["reached"] else "< (not reached even probing every cluster, refine up to 64;"
        refine = f", refine {tuning['refine']}" if tuning.get("refine") else ""
        print(f"tuned: n_probe {tuning['n_probe']}{refine} gives recall@10 {tuning['recall']:.4f} {verdict} "
              f"{tuning['target_recall']}{'' if tuning['reached'] else ' try a finer --codec: fp16 or flat)'} "
              f"on {tuning['sample_queries']} sample queries")
    retriever.save(out, overwrite=args.overwrite)
    print(f"indexed {len(retriever)} documents -> {out}")
    print(json.dumps(index.describe()))
    return 0


def _tuning_queries(corpus: str, texts: list[str]) -> list[str]:
    """The queries --target-recall measures: a BEIR folder's queries.jsonl, else a sample of the documents."""
    import numpy as np

    from flagstone._io import iter_jsonl

    queries_file = Path(corpus) / "queries.jsonl"
    if queries_file.is_file():
        queries = [str(row.get("text", "")) for _, row in iter_jsonl(queries_file)]
        return [q for q in queries if q.strip()][:TUNE_SAMPLE]
    pick = np.random.default_rng(0).choice(len(texts), min(TUNE_SAMPLE, len(texts)), replace=False)
    return [texts[i] for i in sorted(pick)]


def _index_describe(args: argparse.Namespace) -> int:
    from flagstone.index import load
    from flagstone.retrieval.retriever import read_settings

    model = read_settings(Path(args.folder)).get("model") or {}  # no weights are loaded to describe
    index = load(Path(args.folder) / "indexes" / "dense", verify=not args.no_verify)
    print(json.dumps({"model": model.get("name"), **index.describe()}, indent=2))
    return 0


def _index_search(args: argparse.Namespace) -> int:
    from flagstone.retrieval.retriever import Retriever, read_settings

    model = read_settings(Path(args.folder)).get("model") or {}
    embedder = None
    if model:
        from flagstone.models.embedder import Embedder

        embedder = Embedder(model["path"], max_length=model["max_length"], backend=args.backend,
                            precision=args.precision, show_progress=not args.quiet,
                            splade=bool(model.get("splade", False)))
    retriever = Retriever.load(args.folder, embedder=embedder, mmap=args.mmap, verify=not args.no_verify)
    index = retriever.indexes["dense"]
    _apply_probe_options(index, args, None)
    hits = retriever.search(args.query, mode="dense", k=args.k)
    for qi, query in enumerate(args.query):
        print(f"\n{query}  [{index.kind}, {int(hits.evaluated[qi])} documents scored]")
        for rank, (doc_id, score) in enumerate(zip(hits.ids[qi], hits.scores[qi]), 1):
            print(f"  {rank:>2}. {score:8.4f}  {doc_id}: {_snippet(retriever.text(doc_id))}")
    return 0


def _index_verify(args: argparse.Namespace) -> int:
    from flagstone.index import verify
    from flagstone.retrieval.retriever import verify_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    started = time.perf_counter()
    # a single index has CURRENT; anything else is read as a retriever folder, whose errors say what it lacks
    files = verify(folder) if (folder / "CURRENT").is_file() else verify_folder(folder)
    seconds = time.perf_counter() - started
    for file in files:
        print(f"ok  {file}")
    total = sum(file.stat().st_size for file in files)
    print(f"verified {len(files)} files ({total / 1e6:.1f} MB) in {seconds:.2f} s: {folder} is intact")
    return 0


COMMANDS = {"index": cmd_index}
