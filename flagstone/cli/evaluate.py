"""The ``flagstone eval`` command: retrieval evaluation on a BEIR folder, an MTEB-style task suite, or (``eval
newsrec``) a news recommender on MIND-format data."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flagstone.cli._common import (
    EPILOG,
    MODES,
    _add_hybrid_options,
    _add_model_options,
    _add_probe_options,
    _apply_probe_options,
    _cache,
    _check_output_file,
    _embedder,
    _hybrid,
    _retriever,
    check_with,
    existing_file,
    existing_folder,
    output_file,
    output_folder,
    positive_int,
)
from flagstone.errors import FlagstoneError
from flagstone.evaluation import DEFAULT_EVAL_DEPTH


def add_parsers(sub) -> None:
    from flagstone.evaluation.tasks import SUITES

    p = sub.add_parser("eval", help="evaluate retrieval on a BEIR folder, or run an MTEB-style task suite",
                       description="Two uses. (1) eval DATA: retrieval on a BEIR folder (corpus.jsonl, queries.jsonl, "
                                   "qrels/<split>.tsv) in several modes: nDCG, MRR, Recall and MAP at several cut-offs. "
                                   "(2) eval --suite NAME / --tasks T... / --task-file F.json: MTEB task types "
                                   "(retrieval, reranking, STS, pair classification, classification, clustering) "
                                   "with MTEB's protocols; one MTEB-layout JSON per task plus a table and averages. "
                                   "Suites: default, quick, sts, multilingual-sts, all; --list-tasks shows the tasks. "
                                   "(3) eval newsrec MIND_FOLDER --model FOLDER: a news recommender's AUC, MRR, "
                                   "nDCG@5 and nDCG@10 (see flagstone eval newsrec --help).",
                       epilog=EPILOG)
    _add_newsrec_parser(p)
    p.add_argument("data", nargs="?", type=existing_folder, default=None,
                   help="BEIR data set folder (retrieval evaluation)")
    g = p.add_argument_group("task suite")
    g.add_argument("--suite", choices=tuple(SUITES), default=None, help="a named suite")
    g.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="tasks by name (see --list-tasks)")
    g.add_argument("--task-file", action="append", type=existing_file, default=None,
                   help="a JSON file defining your own task(s): name, type, files, columns (repeatable). Tables "
                        "with numbered columns: \"header\": true/false says whether the first row is a header; "
                        "without it an STS or pair-classification file's first row is a header only when its "
                        "score/label cell is not a number, and classification/clustering tasks must say")
    g.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and suites, then exit")
    g.add_argument("--data-root", type=existing_folder, default=None,
                   help="folder the built-in tasks' files are under (default: $FLAGSTONE_DATA, else "
                        "./shared/data or ../shared/data)")
    g.add_argument("--output-dir", type=output_folder, default=None,
                   help="write <task>.json (MTEB layout) as each task finishes, then summary.json and table.md; "
                        "a rerun into the same folder resumes, skipping tasks saved with the same settings")
    g.add_argument("--overwrite", action="store_true",
                   help="recompute every task and replace the files in --output-dir (needed when they were saved "
                        "with other settings)")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--modes", nargs="+", choices=MODES + ("genir",), default=None,
                   help="modes to evaluate (default: every mode the model supports, plus bm25 and hybrid); genir "
                        "scores the generative retriever of --genir-model")
    p.add_argument("--genir-model", type=existing_folder, default=None, metavar="FOLDER",
                   help="a generative retriever saved by `flagstone train genir` on this data set's corpus, for "
                        "--modes genir (constrained beam search with --depth beams)")
    p.add_argument("--k", nargs="+", type=positive_int, default=[1, 3, 5, 10, 100],
                   help="cut-offs (default: 1 3 5 10 100)")
    p.add_argument("--depth", type=positive_int, default=DEFAULT_EVAL_DEPTH,
                   help=f"hits retrieved per query, for the data set and the suite's retrieval tasks; hybrid "
                        f"scores depend on it, and it is recorded in the results (default: {DEFAULT_EVAL_DEPTH})")
    p.add_argument("--max-queries", type=positive_int, default=None, help="evaluate only the first N judged queries")
    p.add_argument("--relevance-level", type=positive_int, default=1,
                   help="binary metrics (MRR, recall, MAP, precision) count a document as relevant when its "
                        "judgement is at least this; nDCG always uses the graded judgements as gains (default: 1)")
    p.add_argument("--output", type=output_file, default=None, help="write the metrics as JSON here")
    p.add_argument("--run-dir", type=output_folder, default=None,
                   help="write one TREC run file per mode into this folder")
    p.add_argument("--index", nargs="+", choices=("flat", "ivf", "hi2"), default=["flat"],
                   help="dense index: exact flat, IVF or HI²; several compare them in one table, e.g. "
                        "--index flat hi2 (default: flat)")
    _add_probe_options(p, tunes="tuned on the data set's query texts (no judgements are read) after indexing")
    g = p.add_argument_group("scale-out on Ray (BEIR folder)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="encode the corpus on a Ray actor pool, build a sharded retriever and search it by "
                        "scatter-gather over shard actors; results equal the single-process run. ADDRESS joins a "
                        "cluster (e.g. auto, ray://head:10001); without it a local cluster is started")
    g.add_argument("--shards", type=positive_int, default=2, help="shards with --ray (default: 2)")
    g.add_argument("--workers", type=positive_int, default=2,
                   help="encoding actors with --ray, one torch thread each (default: 2)")
    _add_model_options(p)
    _add_hybrid_options(p)
    check_with(p, _check_eval)


# flagstone.newsrec.baselines.BASELINES, spelled out so that building the parser imports no numpy (a test keeps
# them equal)
NEWSREC_BASELINES = ("random", "popularity", "topic")


def _add_newsrec_parser(eval_parser) -> None:
    p = eval_parser.add_nested_command(
        "newsrec", epilog=EPILOG,
        description="Score a news recommender (from `flagstone train newsrec`) or a trivial baseline on a labelled "
                    "MIND folder (news.tsv + behaviors.tsv whose impressions carry -1/-0 click labels, e.g. "
                    "MINDsmall_dev). Prints the MIND leaderboard's metrics averaged over impressions (AUC, MRR, "
                    "nDCG@5, nDCG@10; impressions with only clicks or no click are skipped and counted) and the "
                    "encoder work per impression: title tokens and titles through the transformer and milliseconds "
                    "of scoring, with no news vectors cached between impressions.")
    p.add_argument("data", type=existing_folder, help="MIND folder with news.tsv and labelled behaviors.tsv")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", type=existing_folder, default=None, help="a folder written by flagstone train newsrec")
    g.add_argument("--baseline", choices=NEWSREC_BASELINES, default=None,
                   help="random scores; popularity (clicks / shown in --train, smoothed); topic (the share of "
                        "the user's history in the candidate's subcategory)")
    p.add_argument("--train", type=existing_folder, default=None,
                   help="the training MIND folder the popularity baseline counts clicks in")
    p.add_argument("--max-impressions", type=positive_int, default=None, help="score only the first N impressions")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="impressions scored per forward pass (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default: 0)")
    p.add_argument("--output", type=output_file, default=None, help="write the metrics as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.set_defaults(eval_kind="newsrec")
    check_with(p, _check_newsrec)


def _check_newsrec(args: argparse.Namespace) -> None:
    if args.baseline == "popularity" and args.train is None:
        raise FlagstoneError("--baseline popularity needs --train TRAIN_FOLDER to count clicks in")
    if args.train is not None and args.baseline != "popularity":
        raise FlagstoneError("--train is read only by --baseline popularity")
    if args.output:
        _check_output_file(args.output, overwrite=args.overwrite, example="newsrec.json")
    elif args.overwrite:
        raise FlagstoneError("--overwrite applies to --output")


def _eval_newsrec(args: argparse.Namespace) -> int:
    import json

    from flagstone._io import atomic_write
    from flagstone.newsrec.mind import load_mind

    split = load_mind(args.data)
    if args.max_impressions:
        split = split.head(args.max_impressions)
    if args.model:
        from flagstone.newsrec.recommender import NewsRecommender

        recommender = NewsRecommender.load(args.model)
        evaluation = recommender.evaluate(split, batch_size=args.batch_size)
        name, result = f"{recommender.config.kind} ({args.model})", evaluation.as_dict()
    else:
        from flagstone.newsrec.baselines import evaluate_baseline

        train = load_mind(args.train) if args.train else None
        name = f"baseline {args.baseline}"
        result = evaluate_baseline(args.baseline, split, train=train, seed=args.seed).as_dict()
    print(f"{args.data}: {split.describe()}")
    print("| model | AUC | MRR | nDCG@5 | nDCG@10 | tokens encoded / impression | ms / impression |")
    print("|---|---|---|---|---|---|---|")
    tokens = f"{result['tokens_encoded']:.1f}" if "tokens_encoded" in result else "-"
    ms = f"{result['ms_per_impression']:.2f}" if "ms_per_impression" in result else "-"
    print(f"| {name} | {result['auc']:.4f} | {result['mrr']:.4f} | {result['ndcg@5']:.4f} | {result['ndcg@10']:.4f} "
          f"| {tokens} | {ms} |")
    if result["skipped"]:
        print(f"{result['skipped']} impression(s) with only clicks or no click were skipped")
    if args.output:
        with atomic_write(args.output) as handle:
            json.dump({"data": str(args.data), "model": name, **result}, handle, indent=2)
        print(f"metrics -> {args.output}")
    return 0


def _check_eval(args: argparse.Namespace) -> None:
    """The suite's task files and tables are read and checked (STS gold scores included) before the model
    loads; cmd_eval reports a missing data root and the other mistakes that need no reading."""
    generative = "genir" in (args.modes or ())
    if generative != (args.genir_model is not None):
        raise FlagstoneError("--modes genir needs --genir-model FOLDER" if generative
                             else "--genir-model is read only with --modes genir")
    if generative and (args.suite or args.tasks or args.task_file or args.ray is not None):
        raise FlagstoneError("--modes genir evaluates a BEIR folder (not a task suite, not with --ray)")
    if generative and args.index != ["flat"]:
        raise FlagstoneError("--index compares dense indexes; a generative retriever has none")
    if args.list_tasks or not (args.suite or args.tasks or args.task_file):
        return
    from flagstone.evaluation.suite import check_task_data
    from flagstone.evaluation.tasks import default_data_root, load_task_file, resolve_tasks

    tasks = resolve_tasks(args.tasks, args.suite)
    for path in args.task_file or []:
        tasks += load_task_file(path)
    data_root = Path(args.data_root) if args.data_root else default_data_root()
    for task in tasks:
        relative = any(not Path(f).is_absolute() for f in task.files.values())
        if not relative or (data_root is not None and data_root.is_dir()):
            check_task_data(task, data_root)


def cmd_eval(args: argparse.Namespace) -> int:
    if getattr(args, "eval_kind", None) == "newsrec":
        return _eval_newsrec(args)
    if args.list_tasks:
        return _list_tasks()
    if args.suite or args.tasks or args.task_file:
        if args.ray is not None:
            raise FlagstoneError("--ray evaluates a BEIR folder, not a task suite")
        if args.data:
            raise FlagstoneError("give either a BEIR folder or --suite / --tasks / --task-file, not both")
        return _eval_suite(args)
    if args.overwrite:
        raise FlagstoneError("--overwrite applies to a suite's --output-dir (--suite / --tasks / --task-file)")
    if not args.data:
        raise FlagstoneError("nothing to evaluate: give a BEIR folder, or --suite / --tasks / --task-file "
                             "(see flagstone eval --help)")
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.retrieval import evaluate_retrieval

    dataset = load_beir(args.data, args.split)
    if args.max_queries:
        dataset = dataset.head(args.max_queries)
    if args.modes and "genir" in args.modes:
        return _eval_genir(args, dataset)
    kinds = list(dict.fromkeys(args.index))
    probing = args.n_probe is not None or args.target_recall is not None
    if probing and kinds == ["flat"]:
        raise FlagstoneError("--n-probe and --target-recall apply to --index ivf or hi2 (flat search is exact)")
    report = None
    if probing and args.ray is not None:
        raise FlagstoneError("--n-probe and --target-recall are not supported with --ray yet")
    distributed = _RayEvaluation(args, dataset) if args.ray is not None else None
    try:
        for kind in kinds:
            retriever = (_retriever(args, args.modes, dense_index=kind) if distributed is None
                         else distributed.open(kind))
            modes = list(args.modes or retriever.modes)
            if report is not None:  # later index kinds only change the modes that read the dense index
                modes = [m for m in modes if m in ("dense", "hybrid")]
                if not modes:
                    break
            fitted = probing and kind != "flat" and "dense" in retriever.signals
            if fitted:  # index first, then set the probes: a recall target is tuned on the indexed documents
                retriever.fit(dataset.doc_ids, dataset.doc_texts)
                _apply_probe_options(retriever.indexes["dense"], args,
                                     lambda: [dataset.queries[q] for q in dataset.qrels if q in dataset.queries],
                                     lambda queries, target: retriever.tune_dense(queries, target_recall=target))
            part = evaluate_retrieval(retriever, dataset, modes=modes, k_values=args.k, hybrid=_hybrid(args),
                                      depth=args.depth, relevance_level=args.relevance_level,
                                      fit=distributed is None and not fitted)
            if len(kinds) > 1:
                part.results = {(f"{m}[{kind}]" if m in ("dense", "hybrid") else m): r
                                for m, r in part.results.items()}
            if report is None:
                report = part
            else:
                report.results.update(part.results)
    finally:
        if distributed is not None:
            distributed.close()
    print(f"{dataset.name} ({args.split}): {dataset.describe()}; model {report.model}, depth {args.depth}"
          + (f", relevant from judgement {args.relevance_level}" if args.relevance_level > 1 else ""))
    return _show_and_save(report, args)


def _eval_genir(args: argparse.Namespace, dataset) -> int:
    """``--modes genir``, alone or beside other modes: the other modes run as usual, the generative retriever
    is scored on the same judged queries, one table."""
    from flagstone.evaluation.retrieval import evaluate_retrieval
    from flagstone.genir.evaluation import evaluate_generative
    from flagstone.genir.model import GenerativeRetriever

    model = GenerativeRetriever.load(args.genir_model)
    report = evaluate_generative(model, dataset, k_values=args.k, depth=args.depth,
                                 relevance_level=args.relevance_level)
    generative = report.settings
    others = [m for m in args.modes if m != "genir"]
    if others:
        classic = evaluate_retrieval(_retriever(args, others), dataset, modes=others, k_values=args.k,
                                     hybrid=_hybrid(args), depth=args.depth, relevance_level=args.relevance_level)
        classic.results.update(report.results)
        classic.settings["genir_mode"] = generative
        report = classic
    print(f"{dataset.name} ({args.split}): {dataset.describe()}; depth {args.depth}; genir: "
          f"{generative['invalid_docids']} invalid docids, {generative['ms_per_query']} ms/query")
    return _show_and_save(report, args)


def _show_and_save(report, args: argparse.Namespace) -> int:
    """The metrics table at the cutoffs asked for (10 and 100 when asked, else the largest), then the JSON
    report (``--output``) and TREC runs (``--run-dir``) when asked."""
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


class _RayEvaluation:
    """``eval --ray``: the corpus encoded once on a Ray actor pool, then per dense index kind a sharded retriever
    built on shard actors and searched by scatter-gather (in a temporary folder removed at the end)."""

    def __init__(self, args: argparse.Namespace, dataset) -> None:
        import tempfile

        from flagstone.distributed.cluster import connect
        from flagstone.distributed.encode import EmbedderSpec, encode_corpus

        self.args, self.dataset = args, dataset
        connect(args.ray or None)
        self.embedder = _embedder(args) if args.modes is None or any(m != "bm25" for m in args.modes) else None
        probe = _retriever(args, args.modes) if self.embedder is None else None
        signals = probe.signals if probe is not None else self._signals()
        self.signals = signals
        self.workdir = Path(tempfile.mkdtemp(prefix="flagstone-ray-eval-"))
        self.spec = EmbedderSpec.of(self.embedder) if self.embedder is not None else None
        self.encoded = None
        outputs = [s for s in signals if s in ("dense", "sparse", "colbert")]
        if outputs:
            self.encoded = self.workdir / "encoded"
            encode_corpus(dataset.doc_ids, dataset.doc_texts, self.encoded, self.spec, workers=args.workers,
                          outputs=outputs, show_progress=not args.quiet)
        self.opened = []

    def _signals(self) -> list[str]:
        modes = self.args.modes
        if modes is None or ("hybrid" in modes and len({m for m in modes if m != "hybrid"}) < 2):
            return list(self.embedder.available_outputs) + ["bm25"]
        return sorted({m for m in modes if m != "hybrid"}, key=("dense", "sparse", "colbert", "bm25").index)

    def open(self, kind: str):
        from flagstone.distributed.shards import ShardedRetriever, build_sharded

        folder = self.workdir / f"sharded-{kind}"
        build_sharded(folder, self.dataset.doc_ids, self.dataset.doc_texts, spec=self.spec, shards=self.args.shards,
                      signals=self.signals, dense_index=kind, encoded=self.encoded, hybrid=_hybrid(self.args))
        retriever = ShardedRetriever.load(folder, embedder=self.embedder)
        self.opened.append(retriever)
        return retriever

    def close(self) -> None:
        import shutil

        for retriever in self.opened:
            retriever.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


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
    if args.overwrite and not args.output_dir:
        raise FlagstoneError("--overwrite needs --output-dir")
    embedder = _embedder(args)
    print(f"model {embedder.name}: {len(tasks)} task(s), retrieval {modes[0]} at depth {args.depth}",
          file=sys.stderr)
    started, finished = [], []

    def show(result) -> None:
        finished.append(result)
        when = "saved earlier" if result.resumed else f"{result.seconds:.1f} s"
        print(f"{result.task.name:28s} {result.task.type:20s} {result.task.main_score:16s} "
              f"{100 * result.main_score:6.2f}  ({when})", file=sys.stderr)

    try:
        report = run_suite(tasks, embedder, data_root=data_root, cache=_cache(args), retrieval_mode=modes[0],
                           depth=args.depth, output_dir=args.output_dir, overwrite=args.overwrite,
                           show_progress=not args.quiet, on_start=started.append, on_result=show)
    except Exception:
        if started and (not finished or finished[-1].task is not started[-1]):
            # main() prints the error itself; say which task raised it and what was kept
            kept = (f"the {len(finished)} finished task(s) are saved in {args.output_dir}; rerun the same command "
                    f"to resume" if args.output_dir else "with --output-dir, finished tasks are kept across runs")
            print(f"flagstone: task {started[-1].name} failed; {kept}", file=sys.stderr)
        raise
    print(report.table())
    if args.output_dir:
        print(f"results -> {args.output_dir}")
    return 0


COMMANDS = {"eval": cmd_eval}
