"""The ``flagstone index`` commands: build, search and describe a saved dense index."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from flagstone.cli._common import EPILOG, _add_model_options, _cache, _embedder, _read_texts, _snippet
from flagstone.errors import DataError, FlagstoneError


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="build a saved dense index (flat, IVF, HI²) and search it",
                       description="Build, inspect and search a saved dense index.", epilog=EPILOG)
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="encode a corpus and save an index folder",
                        description="Encode a corpus (BEIR folder, .jsonl or .txt) and save an index folder: the "
                                    "dense index, the BM25 term model (HI² query terms) and the documents.",
                        epilog=EPILOG)
    b.add_argument("corpus", help="a BEIR folder, a corpus .jsonl (_id/id, title, text) or a .txt file")
    b.add_argument("-o", "--output", required=True, help="index folder to write (replaced atomically)")
    b.add_argument("--index", choices=("flat", "ivf", "hi2"), default="hi2", help="index type (default: hi2)")
    b.add_argument("--codec", choices=("flat", "fp16", "pq"), default="flat",
                   help="vector storage: float32, float16 or product quantisation (default: flat)")
    b.add_argument("--n-lists", type=int, default=None, help="k-means clusters (default: about 4 sqrt(N))")
    b.add_argument("--n-probe", type=int, default=None, help="clusters probed per query (default: sqrt(n_lists))")
    b.add_argument("--terms-per-doc", type=int, default=15, help="HI²: salient terms per document (default: 15)")
    _add_model_options(b)
    s_ = isub.add_parser("search", help="search a saved index folder",
                         description="Search a folder written by `flagstone index build`.", epilog=EPILOG)
    s_.add_argument("folder", help="index folder")
    s_.add_argument("-q", "--query", action="append", required=True, help="a query (repeatable)")
    s_.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    s_.add_argument("--n-probe", type=int, default=None, help="override the clusters probed per query")
    s_.add_argument("--mmap", action="store_true", help="memory-map the vectors instead of reading them")
    s_.add_argument("--quiet", action="store_true", help="no progress bars")
    d = isub.add_parser("describe", help="print an index folder's settings and size",
                        description="Print an index folder's settings, size and memory per document.")
    d.add_argument("folder", help="index folder")


_INDEX_META = "flagstone-index.json"


def cmd_index(args: argparse.Namespace) -> int:
    if args.index_command is None:
        raise FlagstoneError("choose an action: flagstone index build|search|describe (see --help)")
    return {"build": _index_build, "search": _index_search, "describe": _index_describe}[args.index_command](args)


def _index_build(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from flagstone._io import atomic_write
    from flagstone.index.flat import FlatIndex
    from flagstone.index.hi2 import HI2Index
    from flagstone.index.ivf import IVFIndex
    from flagstone.retrieval.bm25 import BM25

    ids, texts = _read_texts(args.corpus)
    out = Path(args.output)
    if out.exists() and not (out / _INDEX_META).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a Flagstone index folder; refusing to overwrite it")
    embedder = _embedder(args)
    cache = _cache(args)
    vectors = (cache.encode(embedder, texts) if cache else embedder.encode(texts)).dense
    knobs = {"codec": args.codec}
    if args.index != "flat":
        knobs |= {"n_lists": args.n_lists, "n_probe": args.n_probe}
    if args.index == "hi2":
        index = HI2Index(vectors.shape[1], terms_per_doc=args.terms_per_doc, **knobs)
        bm25 = BM25()
        index.add(ids, vectors, bm25.fit_transform(texts))
    else:
        index = (IVFIndex if args.index == "ivf" else FlatIndex)(vectors.shape[1], **knobs)
        index.add(ids, vectors)
        bm25 = None
    # build beside the target, then swap folders, so an interrupted build never leaves a broken index
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        index.save(staging / "dense")
        if bm25 is not None:
            bm25.save(staging / "bm25.json")
        with atomic_write(staging / "documents.jsonl") as handle:
            for doc_id, text in zip(ids, texts):
                handle.write(json.dumps({"_id": doc_id, "text": text}) + "\n")
        with atomic_write(staging / _INDEX_META) as handle:
            json.dump({"model": str(embedder.path), "model_name": embedder.name,
                       "max_length": embedder.settings.max_length, "index": index.describe()}, handle, indent=2)
        old = out.parent / f".{out.name}.old-{staging.name.rsplit('-', 1)[-1]}"
        if out.exists():
            out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    described = index.describe()
    print(f"indexed {len(index)} documents -> {out}")
    print(json.dumps(described))
    return 0


def _load_index_folder(folder: str, mmap: bool = False):
    from flagstone.index.dense import DenseIndex

    root = Path(folder)
    meta_file = root / _INDEX_META
    if not meta_file.is_file():
        raise DataError(f"{root} is not an index folder written by `flagstone index build` (no {_INDEX_META})")
    meta = json.loads(meta_file.read_text())
    return root, meta, DenseIndex.load(root / "dense", mmap=mmap, verify=not mmap)


def _index_describe(args: argparse.Namespace) -> int:
    _, meta, index = _load_index_folder(args.folder)
    print(json.dumps({"model": meta["model_name"], **index.describe()}, indent=2))
    return 0


def _index_search(args: argparse.Namespace) -> int:
    from flagstone.evaluation.beir import load_corpus
    from flagstone.index.hi2 import HI2Index
    from flagstone.models.embedder import Embedder
    from flagstone.retrieval.bm25 import BM25

    root, meta, index = _load_index_folder(args.folder, mmap=args.mmap)
    if args.n_probe is not None:
        index.n_probe = args.n_probe
    embedder = Embedder(meta["model"], max_length=meta["max_length"], show_progress=not args.quiet)
    queries = embedder.encode_queries(args.query).dense
    if isinstance(index, HI2Index):
        result = index.search(queries, args.k, query_terms=BM25.load(root / "bm25.json").transform_queries(args.query))
    else:
        result = index.search(queries, args.k)
    ids, texts = load_corpus(root / "documents.jsonl")
    by_id = dict(zip(ids, texts))
    for qi, query in enumerate(args.query):
        print(f"\n{query}  [{index.kind}, {int(result.docs_evaluated[qi])} documents scored]")
        for rank, (doc_id, score) in enumerate(zip(index.ids_of(result.positions)[qi], result.scores[qi]), 1):
            print(f"  {rank:>2}. {score:8.4f}  {doc_id}: {_snippet(by_id[doc_id])}")
    return 0


COMMANDS = {"index": cmd_index}
