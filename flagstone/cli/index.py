"""The ``flagstone index`` commands: build, search and describe a saved retriever folder (dense index)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from flagstone.cli._common import (
    EPILOG,
    _add_model_options,
    _cache,
    _embedder,
    _read_texts,
    _snippet,
    existing_folder,
    existing_path,
    output_folder,
    positive_int,
)
from flagstone.errors import FlagstoneError


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="build a saved dense index (flat, IVF, HI²) and search it",
                       description="Build, inspect and search a saved dense index.", epilog=EPILOG)
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
    b.add_argument("--n-lists", type=positive_int, default=None, help="k-means clusters (default: about 4 sqrt(N))")
    b.add_argument("--n-probe", type=positive_int, default=None,
                   help="clusters probed per query (default: sqrt(n_lists))")
    b.add_argument("--terms-per-doc", type=positive_int, default=15,
                   help="HI²: salient terms per document (default: 15)")
    _add_model_options(b)
    s_ = isub.add_parser("search", help="search a saved index folder",
                         description="Search a folder written by `flagstone index build`.", epilog=EPILOG)
    s_.add_argument("folder", type=existing_folder, help="index folder")
    s_.add_argument("-q", "--query", action="append", required=True, help="a query (repeatable)")
    s_.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    s_.add_argument("--n-probe", type=positive_int, default=None, help="override the clusters probed per query")
    s_.add_argument("--mmap", action="store_true", help="memory-map the vectors instead of reading them")
    s_.add_argument("--quiet", action="store_true", help="no progress bars")
    d = isub.add_parser("describe", help="print an index folder's settings and size",
                        description="Print an index folder's settings, size and memory per document.")
    d.add_argument("folder", type=existing_folder, help="index folder")


def cmd_index(args: argparse.Namespace) -> int:
    if args.index_command is None:
        raise FlagstoneError("choose an action: flagstone index build|search|describe (see --help)")
    return {"build": _index_build, "search": _index_search, "describe": _index_describe}[args.index_command](args)


def _index_build(args: argparse.Namespace) -> int:
    from flagstone.retrieval.retriever import DENSE_INDEXES, Retriever, check_output_folder

    out = Path(args.output)
    check_output_folder(out, overwrite=args.overwrite)  # before any encoding
    ids, texts = _read_texts(args.corpus)
    embedder = _embedder(args)
    knobs: dict[str, object] = {"codec": args.codec}
    if args.index != "flat":
        knobs |= {"n_lists": args.n_lists, "n_probe": args.n_probe}
    if args.index == "hi2":
        knobs["terms_per_doc"] = args.terms_per_doc
    index = DENSE_INDEXES[args.index](embedder.dim, **knobs)
    retriever = Retriever(embedder, signals=["dense"], cache=_cache(args), dense_index=index)
    retriever.add(ids, texts)
    retriever.save(out, overwrite=args.overwrite)
    print(f"indexed {len(retriever)} documents -> {out}")
    print(json.dumps(index.describe()))
    return 0


def _index_describe(args: argparse.Namespace) -> int:
    from flagstone.index import load
    from flagstone.retrieval.retriever import read_settings

    model = read_settings(Path(args.folder)).get("model") or {}  # no weights are loaded to describe
    index = load(Path(args.folder) / "indexes" / "dense")
    print(json.dumps({"model": model.get("name"), **index.describe()}, indent=2))
    return 0


def _index_search(args: argparse.Namespace) -> int:
    from flagstone.retrieval.retriever import Retriever, read_settings

    model = read_settings(Path(args.folder)).get("model") or {}
    embedder = None
    if model:
        from flagstone.models.embedder import Embedder

        embedder = Embedder(model["path"], max_length=model["max_length"], show_progress=not args.quiet)
    retriever = Retriever.load(args.folder, embedder=embedder, mmap=args.mmap, verify=not args.mmap)
    index = retriever.indexes["dense"]
    if args.n_probe is not None:
        index.n_probe = args.n_probe
    hits = retriever.search(args.query, mode="dense", k=args.k)
    for qi, query in enumerate(args.query):
        print(f"\n{query}  [{index.kind}, {int(hits.evaluated[qi])} documents scored]")
        for rank, (doc_id, score) in enumerate(zip(hits.ids[qi], hits.scores[qi]), 1):
            print(f"  {rank:>2}. {score:8.4f}  {doc_id}: {_snippet(retriever.text(doc_id))}")
    return 0


COMMANDS = {"index": cmd_index}
