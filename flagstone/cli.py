"""The ``flagstone`` command: a thin layer over the library. User mistakes print one line, no traceback."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from flagstone import cli_rag, cli_serve, cli_train
from flagstone.errors import DataError, FlagstoneError

EPILOG = "Models: a local folder, a hub name (BAAI/bge-m3) or a preset (see `flagstone models`)."


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="embedding model (default: the bundled all-MiniLM-L6-v2)")
    g.add_argument("--max-length", type=int, default=None, help="max tokens per text (default: the model's)")
    g.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute type; bfloat16 is about 2x faster on CPUs with AVX-512 BF16, vectors differ "
                        "slightly (default: float32)")
    g.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: $FLAGSTONE_CACHE or ~/.cache/flagstone)")
    g.add_argument("--no-cache", action="store_true", help="always re-encode documents")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_hybrid_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hybrid")
    g.add_argument("--weights", default=None, metavar="SIGNAL=W,...",
                   help="hybrid weights, e.g. dense=0.3,bm25=0.7 (default: depends on the model's heads)")
    g.add_argument("--fusion", choices=("weighted", "rrf"), default="weighted",
                   help="weighted sum of normalised scores, or reciprocal-rank fusion (default: weighted)")
    g.add_argument("--normalize", choices=("minmax", "zscore", "none"), default="minmax",
                   help="score normalisation before a weighted sum (default: minmax)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagstone",
        description="Retrieval toolkit: dense, sparse (lexical) and ColBERT embeddings, BM25, hybrid search, "
                    "reranking, training, evaluation, and retrieval-augmented answering.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="index the Python standard library's docstrings and answer example queries",
                       description="The main job end to end on embedded defaults: index a corpus every machine "
                                   "has (Python's own docstrings) and show results from each retrieval mode.",
                       epilog=EPILOG)
    p.add_argument("--docs", type=int, default=2000, help="number of docstrings to index (default: 2000)")
    p.add_argument("--query", action="append", default=None, help="a query to ask (repeatable)")
    p.add_argument("-k", type=int, default=3, help="results shown per mode (default: 3)")
    _add_model_options(p)

    p = sub.add_parser("models", help="list the preset models and whether they are available offline",
                       description="List the preset models Flagstone knows, with pooling and settings.")

    p = sub.add_parser("encode", help="encode texts to an .npz file of dense / sparse / ColBERT outputs",
                       description="Encode a JSONL file (field 'text', optional 'title') or a text file "
                                   "(one text per line) and save the outputs as .npz.",
                       epilog=EPILOG)
    p.add_argument("input", help="texts: .jsonl or .txt")
    p.add_argument("-o", "--output", required=True, help="output .npz file")
    p.add_argument("--queries", action="store_true", help="encode as queries (adds the query instruction)")
    p.add_argument("--sparse", action="store_true", help="also output sparse lexical weights (needs M3 heads)")
    p.add_argument("--colbert", action="store_true", help="also output ColBERT vectors (needs M3 heads)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense vectors")
    p.add_argument("--no-truncate", action="store_true",
                   help="fail on texts longer than the max length instead of truncating them")
    _add_model_options(p)

    p = sub.add_parser("search", help="search a corpus (BEIR folder, JSONL or text file) with any mode",
                       description="Index a corpus and print the top results for each query.", epilog=EPILOG)
    p.add_argument("corpus", help="a BEIR folder, a corpus .jsonl (_id/id, title, text) or a .txt file")
    p.add_argument("-q", "--query", action="append", required=True, help="a query (repeatable)")
    p.add_argument("--mode", default="hybrid", help="dense, sparse, colbert, bm25 or hybrid (default: hybrid)")
    p.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    g = p.add_argument_group("reranking")
    g.add_argument("--rerank", default=None, metavar="MODEL",
                   help="rerank the first stage: a cross-encoder (folder or hub name, bge-reranker format), "
                        "'llm' for the bundled SmolLM2 yes/no reranker, or 'llm:MODEL' for another causal LM")
    g.add_argument("--rerank-depth", type=int, default=100, help="first-stage hits to rerank (default: 100)")
    g.add_argument("--first-stage-weight", type=float, default=0.0,
                   help="interpolate: (1-w) reranker + w first stage, min-max normalised (default: 0)")
    _add_model_options(p)
    _add_hybrid_options(p)

    p = sub.add_parser("eval", help="evaluate retrieval on a BEIR folder, or run an MTEB-style task suite",
                       description="Two uses. (1) eval DATA: retrieval on a BEIR folder (corpus.jsonl, queries.jsonl, "
                                   "qrels/<split>.tsv) in several modes: nDCG, MRR, Recall and MAP at several cut-offs. "
                                   "(2) eval --suite NAME / --tasks T... / --task-file F.json: MTEB task types "
                                   "(retrieval, reranking, STS, pair classification, classification, clustering) "
                                   "with MTEB's protocols; one MTEB-layout JSON per task plus a table and averages. "
                                   "Suites: default, quick, sts, multilingual-sts, all; --list-tasks shows the tasks.",
                       epilog=EPILOG)
    p.add_argument("data", nargs="?", default=None, help="BEIR data set folder (retrieval evaluation)")
    g = p.add_argument_group("task suite")
    g.add_argument("--suite", default=None, help="a named suite: default, quick, sts, multilingual-sts, all")
    g.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="tasks by name (see --list-tasks)")
    g.add_argument("--task-file", action="append", default=None,
                   help="a JSON file defining your own task(s): name, type, files, columns (repeatable)")
    g.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and suites, then exit")
    g.add_argument("--data-root", default=None,
                   help="folder the built-in tasks' files are under (default: $FLAGSTONE_DATA, else "
                        "./shared/data or ../shared/data)")
    g.add_argument("--output-dir", default=None, help="write <task>.json (MTEB layout), summary.json, table.md here")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--modes", nargs="+", default=None,
                   help="modes to evaluate (default: every mode the model supports, plus bm25 and hybrid)")
    p.add_argument("--k", nargs="+", type=int, default=[1, 3, 5, 10, 100], help="cut-offs (default: 1 3 5 10 100)")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N judged queries")
    p.add_argument("--output", default=None, help="write the metrics as JSON here")
    p.add_argument("--run-dir", default=None, help="write one TREC run file per mode into this folder")
    p.add_argument("--index", nargs="+", choices=("flat", "ivf", "hi2"), default=["flat"],
                   help="dense index: exact flat, IVF or HI²; several compare them in one table, e.g. "
                        "--index flat hi2 (default: flat)")
    _add_model_options(p)
    _add_hybrid_options(p)

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
    cli_train.add_parsers(sub, EPILOG)
    cli_rag.add_parsers(sub, EPILOG)
    cli_serve.add_parsers(sub, EPILOG)
    return parser


# -- helpers ---------------------------------------------------------------------------------------
def _embedder(args: argparse.Namespace):
    from flagstone.models.embedder import Embedder
    from flagstone.models.presets import DEFAULT_MODEL

    return Embedder(args.model or DEFAULT_MODEL, max_length=args.max_length, batch_size=args.batch_size,
                    dtype=args.dtype, show_progress=not args.quiet)


def _cache(args: argparse.Namespace):
    if args.no_cache:
        return None
    from flagstone.models.cache import EmbeddingCache

    return EmbeddingCache(Path(args.cache_dir) / "embeddings" if args.cache_dir else None)


def _hybrid(args: argparse.Namespace):
    from flagstone.retrieval.retriever import HybridConfig

    weights = None
    if args.weights:
        weights = {}
        for part in args.weights.split(","):
            name, sep, value = part.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise FlagstoneError(f"bad --weights entry {part!r}: expected SIGNAL=NUMBER") from None
            if not sep:
                raise FlagstoneError(f"bad --weights entry {part!r}: expected SIGNAL=NUMBER")
    return HybridConfig(weights=weights, method=args.fusion, normalize=args.normalize)


def _retriever(args: argparse.Namespace, modes: Sequence[str] | None = None, dense_index: str = "flat"):
    from flagstone.retrieval.retriever import Retriever

    needs_model = modes is None or any(m != "bm25" for m in modes)
    embedder = _embedder(args) if needs_model else None
    signals = None
    if modes is not None:
        signals = sorted({m for m in modes if m != "hybrid"}, key=("dense", "sparse", "colbert", "bm25").index)
        if "hybrid" in modes and len(signals) < 2:
            signals = None  # hybrid alone: use every signal the model has, plus BM25
    return Retriever(embedder, signals=signals, cache=_cache(args), hybrid=_hybrid(args) if "weights" in args else None,
                     dense_index=dense_index)


def _read_texts(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) from a BEIR folder, a JSONL file or a plain text file."""
    from flagstone._io import iter_jsonl, read_text, require_file
    from flagstone.evaluation.beir import load_corpus

    p = Path(path)
    if p.is_dir():
        return load_corpus(p / "corpus.jsonl")
    require_file(p, "input file")
    if p.suffix == ".jsonl":
        ids, texts = [], []
        for line_no, row in iter_jsonl(p):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{p}:{line_no}: needs a non-empty string field 'text'")
            title = row.get("title") or ""
            ids.append(str(row.get("_id", row.get("id", line_no))))
            texts.append(f"{title} {text}".strip())
        if len(set(ids)) != len(ids):
            raise DataError(f"{p}: document ids are not unique")
    else:
        lines = read_text(p, "input file").splitlines()
        ids = [str(i) for i, line in enumerate(lines, 1) if line.strip()]
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{p}: no texts found (the file is empty)")
    return ids, texts


def _snippet(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# -- commands --------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from flagstone.models.presets import DEFAULT_MODEL, PRESETS

    print(f"{'name':<20} {'hub name':<40} {'pooling':<8} {'max len':>7}  available")
    for p in PRESETS.values():
        where = "bundled" if p.local_path() else "download"
        mark = " (default)" if p.name == DEFAULT_MODEL else ""
        print(f"{p.name:<20} {p.hub_id:<40} {p.pooling:<8} {p.max_length:>7}  {where}{mark}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from flagstone._io import atomic_write

    if Path(args.output).is_dir():
        raise DataError(f"output {args.output} is a folder; give a file name such as vectors.npz")
    ids, texts = _read_texts(args.input)
    embedder = _embedder(args)
    truncated = embedder.count_truncated(texts)
    if truncated and not args.no_truncate:
        print(f"note: {truncated} of {len(texts)} texts exceed {embedder.settings.max_length} tokens and are "
              "truncated", file=sys.stderr)
    emb = embedder.encode(texts, dense=not args.no_dense, sparse=args.sparse, colbert=args.colbert,
                          is_query=args.queries, truncate=not args.no_truncate)
    arrays = emb.to_arrays()
    arrays["ids"] = np.asarray(ids)
    with atomic_write(args.output, "wb") as handle:
        np.savez(handle, **arrays)
    print(f"encoded {len(texts)} texts ({', '.join(emb.outputs)}) with {embedder.name} -> {args.output}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    ids, texts = _read_texts(args.corpus)
    retriever = _retriever(args, [args.mode])
    retriever.fit(ids, texts)
    by_id = dict(zip(ids, texts))
    if args.rerank:
        from flagstone.models.reranker import rerank_hits

        reranker = _reranker(args.rerank)
        first = retriever.search(args.query, mode=args.mode, k=max(args.k, args.rerank_depth))
        from flagstone.retrieval.retriever import Hits

        ranked = rerank_hits(reranker, args.query, first, by_id, depth=args.rerank_depth,
                             first_stage_weight=args.first_stage_weight, show_progress=not args.quiet)
        hits = Hits(ranked.mode, [row[: args.k] for row in ranked.ids], ranked.scores[:, : args.k],
                    {n: v[:, : args.k] for n, v in ranked.signals.items()})
    else:
        hits = retriever.search(args.query, mode=args.mode, k=args.k)
    for qi, query in enumerate(args.query):
        if args.json:
            print(json.dumps({"query": query, "mode": hits.mode, "hits": [
                {"id": d, "score": float(s), **{n: float(v[qi, r]) for n, v in hits.signals.items()}}
                for r, (d, s) in enumerate(zip(hits.ids[qi], hits.scores[qi]))]}))
            continue
        print(f"\n{query}  [{hits.mode}]")
        for rank, (doc_id, score) in enumerate(zip(hits.ids[qi], hits.scores[qi]), start=1):
            print(f"  {rank:>2}. {score:8.4f}  {doc_id}: {_snippet(by_id[doc_id])}")
    return 0


def _reranker(spec: str):
    from flagstone.models.reranker import CrossEncoderReranker, LLMReranker

    if spec == "llm":
        return LLMReranker()
    if spec.startswith("llm:"):
        return LLMReranker(spec[4:])
    return CrossEncoderReranker(spec)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.list_tasks:
        return _list_tasks()
    if args.suite or args.tasks or args.task_file:
        if args.data:
            raise FlagstoneError("give either a BEIR folder or --suite / --tasks / --task-file, not both")
        return _eval_suite(args)
    if not args.data:
        raise FlagstoneError("nothing to evaluate: give a BEIR folder, or --suite / --tasks / --task-file "
                             "(see flagstone eval --help)")
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.retrieval import evaluate_retrieval

    dataset = load_beir(args.data, args.split)
    if args.max_queries:
        dataset = dataset.head(args.max_queries)
    kinds = list(dict.fromkeys(args.index))
    report = None
    for kind in kinds:
        retriever = _retriever(args, args.modes, dense_index=kind)
        modes = list(args.modes or retriever.modes)
        if report is not None:  # later index kinds only change the modes that read the dense index
            modes = [m for m in modes if m in ("dense", "hybrid")]
            if not modes:
                break
        part = evaluate_retrieval(retriever, dataset, modes=modes, k_values=args.k, hybrid=_hybrid(args))
        if len(kinds) > 1:
            part.results = {(f"{m}[{kind}]" if m in ("dense", "hybrid") else m): r for m, r in part.results.items()}
        if report is None:
            report = part
        else:
            report.results.update(part.results)
    print(f"{dataset.name} ({args.split}, {len(dataset.qrels)} queries, {len(dataset.doc_ids)} documents), "
          f"model {report.model}")
    cutoffs = sorted(set(args.k) & {10, 100}) or [max(args.k)]
    shown = [f"{m}@{k}" for k in cutoffs for m in ("ndcg", "mrr", "recall", "map")]
    print(report.table(metrics=shown))
    if args.output:
        report.save_json(args.output)
        print(f"metrics -> {args.output}")
    if args.run_dir:
        for path in report.write_trec_runs(args.run_dir):
            print(f"run -> {path}")
    return 0


def _list_tasks() -> int:
    from flagstone.evaluation.tasks import REGISTRY, SUITES

    print("| task | type | main score | languages | data |")
    print("|---|---|---|---|---|")
    for t in REGISTRY.values():
        print(f"| {t.name} | {t.type} | {t.main_score} | {'-'.join(t.languages)} | {t.reference} |")
    print()
    for name, tasks in SUITES.items():
        print(f"suite {name}: {' '.join(tasks)}")
    return 0


def _eval_suite(args: argparse.Namespace) -> int:
    from flagstone.evaluation.suite import run_suite
    from flagstone.evaluation.tasks import (
        default_data_root,
        load_task_file,
        resolve_tasks,
    )

    tasks = resolve_tasks(args.tasks, args.suite)
    for path in args.task_file or []:
        tasks += load_task_file(path)
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    needs_root = [t.name for t in tasks if any(not Path(f).is_absolute() for f in t.files.values())]
    if needs_root and (data_root is None or not data_root.is_dir()):
        raise FlagstoneError(f"the built-in tasks ({', '.join(needs_root)}) read the shared data folder, which was "
                             f"not found{f' at {data_root}' if data_root else ''}: pass --data-root or set "
                             f"FLAGSTONE_DATA")
    modes = args.modes or ["dense"]
    if len(modes) > 1:
        raise FlagstoneError("a suite runs retrieval tasks in one mode: give a single --modes value")
    embedder = _embedder(args)
    print(f"model {embedder.name}: {len(tasks)} task(s)", file=sys.stderr)

    def show(result) -> None:
        print(f"{result.task.name:28s} {result.task.type:20s} {result.task.main_score:16s} "
              f"{100 * result.main_score:6.2f}  ({result.seconds:.1f} s)", file=sys.stderr)

    report = run_suite(tasks, embedder, data_root=data_root, cache=_cache(args), retrieval_mode=modes[0],
                       show_progress=not args.quiet, on_result=show)
    print(report.table())
    if args.output_dir:
        report.save(args.output_dir)
        print(f"results -> {args.output_dir}")
    return 0


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


DEMO_QUERIES = (
    "parse command line arguments",
    "compress a file with gzip",
    "read rows from a CSV file",
    "send an email message over SMTP",
)


def cmd_demo(args: argparse.Namespace) -> int:
    from flagstone.corpora import python_docstrings

    ids, texts = python_docstrings(args.docs)
    print(f"Indexing {len(ids)} docstrings of the Python standard library...")
    retriever = _retriever(args)
    retriever.fit(ids, texts)
    embedder = retriever.embedder
    print(f"Model: {embedder!r}")
    missing = [o for o in ("sparse", "colbert") if o not in embedder.available_outputs]
    if missing:
        print(f"Modes {', '.join(missing)}: not available for {embedder.name} (no M3 heads: sparse_linear.pt / "
              "colbert_linear.pt); use bge-m3 or a model trained with them.")
    by_id = dict(zip(ids, texts))
    queries = args.query or list(DEMO_QUERIES)
    results = {mode: retriever.search(queries, mode=mode, k=args.k) for mode in retriever.modes}
    for qi, query in enumerate(queries):
        print(f"\nQ: {query}")
        for mode, hits in results.items():
            print(f"  [{mode}]")
            for doc_id, score in zip(hits.ids[qi], hits.scores[qi]):
                print(f"    {score:7.3f}  {doc_id}: {_snippet(by_id[doc_id], 70)}")
    return 0


COMMANDS = {"demo": cmd_demo, "models": cmd_models, "encode": cmd_encode, "search": cmd_search, "eval": cmd_eval,
            "index": cmd_index, **cli_train.COMMANDS,
            **cli_rag.COMMANDS, **cli_serve.COMMANDS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    for name in ("batch_size", "k", "docs", "max_length", "max_queries", "n_lists", "n_probe", "rerank_depth",
                 "epochs", "group_size", "gradient_accumulation", "max_steps", "negatives", "checkpoint_every",
                 "chunk_tokens", "max_new_tokens", "port", "max_texts", "max_chars", "max_batch"):
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and v < 1 for v in values):
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    weight = getattr(args, "first_stage_weight", 0.0)
    if not 0.0 <= weight <= 1.0:
        parser.error("--first-stage-weight must be between 0 and 1")
    try:
        return COMMANDS[args.command](args)
    except (FlagstoneError, ValueError) as exc:
        print(f"flagstone: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or less that closed early
        return 0
    except OSError as exc:  # permissions, full disk, a folder where a file was expected
        print(f"flagstone: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flagstone: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
