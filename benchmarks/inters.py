"""INTERS on two CPU cores: instruction-tune the bundled SmolLM2-135M-Instruct with LoRA on search-task
instructions built from the shared data, and measure it before and after, per held-out task and as an LLM
reranker on SciFact (pointwise, pairwise and listwise prompting).

    flock /work/bench.lock python benchmarks/inters.py [--queries 12] [--depth 10] [--max-train-per-task 12]

Protocol (SciFact test queries are never tuned on: reranking data comes from SciFact *train* queries):
- data: ``build_inters_data`` over ../shared/data, seed 0; per task ``--held-out-per-task`` rows held out,
  up to ``--max-train-per-task`` rows for training; saved with the seed in its manifest;
- tuning: LoRA (rank ``--rank``) on every projection of SmolLM2, ``--epochs`` epochs, bf16 autocast, rows
  longer than ``--train-max-length`` tokens left out (counted); ``--held-out-tasks`` are not trained on;
- per-task scores on the held-out rows before and after (accuracy / token F1 / listwise top-1);
- reranking: BM25 (flagstone's, k1 1.2, b 0.75) top ``--depth`` for the first ``--queries`` SciFact test
  queries (qrels order), reranked by the LLM in each mode; nDCG@10 over the same slice, BM25 alone beside it.
  Listwise replies that do not parse are counted and leave their window in the order it came in.
Order of work: pointwise and listwise before, tuning, the same after, per-task scores, pairwise last; the
results file is rewritten after each step with a ``status``, so a run cut short keeps what it finished.
The defaults are the small run that fit a shared 2-core machine; a fuller run, e.g.
``--queries 100 --depth 20 --max-train-per-task 300 --held-out-per-task 40 --window 10 --step 5``, takes hours
there. Writes benchmarks/results/inters.{json,md}; the adapter goes to benchmarks/models/inters-smollm2.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import RESULTS, SHARED_DATA, Output, refused, save_results

from flagstone.evaluation.beir import load_beir
from flagstone.evaluation.metrics import evaluate_run
from flagstone.inters.data import build_inters_data, save_inters_data
from flagstone.inters.scoring import score_rows
from flagstone.inters.settings import LoraSettings
from flagstone.inters.tuning import tune_lora
from flagstone.models.causal_lm import load_causal_lm
from flagstone.models.prompts import TASKS
from flagstone.models.reranker import LLMReranker
from flagstone.rerank import rerank_hits
from flagstone.retrieval.retriever import Retriever
from flagstone.training.settings import TrainingConfig

MODES = ("pointwise", "listwise", "pairwise")  # cheapest first
TASK_ORDER = tuple(TASKS)
DEFAULT_MODEL = RESULTS.parent / "models" / "inters-smollm2"
DEFAULT_DATA = RESULTS.parent / "models" / "inters-data"


def ndcg10(hits, qids, qrels) -> float:
    return evaluate_run(hits.to_run(qids), {q: qrels[q] for q in qids}, (10,)).mean["ndcg@10"]


def rerank_mode(mode: str, model: str, test, qids, first, texts, args, out: dict) -> None:
    """nDCG@10 and ms/query of the LLM reranker in ``mode`` over the slice, into ``out[mode]``."""
    queries = [test.queries[q] for q in qids]
    # every mode asks with its registry template (pointwise: "relevant"), the wording the tuning data uses
    reranker = LLMReranker(model, mode=mode, template="relevant" if mode == "pointwise" else None,
                           max_length=args.max_length[mode], batch_size=8, dtype="bfloat16", both_orders=True,
                           window=args.window, step=args.step, on_unparsed="keep")
    start = time.perf_counter()
    hits = rerank_hits(reranker, queries, first, texts, depth=args.depth, show_progress=True)
    row = {"ndcg@10": ndcg10(hits, qids, test.qrels),
           "ms_per_query": (time.perf_counter() - start) * 1000 / len(qids)}
    if mode == "listwise":
        row["windows"] = len(reranker.listwise_log)
        row["unparsed"] = reranker.listwise_unparsed
        row["unparsed_examples"] = [r.reply[:120] for r in reranker.listwise_log if not r.parsed][:5]
    out[mode] = row
    print(mode, model, json.dumps(row)[:300], flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA), help="the shared data folder")
    parser.add_argument("--queries", type=int, default=12, help="first N SciFact test queries reranked (default: 12)")
    parser.add_argument("--depth", type=int, default=10, help="BM25 candidates reranked per query (default: 10)")
    parser.add_argument("--held-out-per-task", type=int, default=5)
    parser.add_argument("--max-train-per-task", type=int, default=12)
    parser.add_argument("--held-out-tasks", nargs="*", default=["fact_verification"],
                        help="tasks kept out of tuning entirely, to see transfer to an unseen task "
                             "(default: fact_verification)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=4, help="training rows per step (default: 4)")
    parser.add_argument("--train-max-length", type=int, default=384,
                        help="tokens per training row; longer rows are left out and counted (default: 384)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--window", type=int, default=5, help="listwise window (default: 5)")
    parser.add_argument("--step", type=int, default=2, help="listwise window step (default: 2)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="LLM reranking modes, measured in this order (default: pointwise listwise pairwise)")
    parser.add_argument("--output-model", default=str(DEFAULT_MODEL), help="where the tuned LoRA model is saved")
    parser.add_argument("--output-data", default=str(DEFAULT_DATA), help="where the INTERS training data is saved")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output-model or --output-data you named (the default folder is this script's to replace)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1; the 2 cores are shared, and 2 threads under load wait on "
                             "each other)")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")
    args = parser.parse_args()
    if refused([Output("--output-model", args.output_model, DEFAULT_MODEL),
                Output("--output-data", args.output_data, DEFAULT_DATA)], args.overwrite):
        return 2
    import torch

    torch.set_num_threads(args.threads)
    args.max_length = {"pointwise": 320, "pairwise": 256, "listwise": 512}
    if args.quick:
        args.queries, args.depth, args.held_out_per_task, args.max_train_per_task = 2, 4, 2, 3
    wall = time.perf_counter()

    data = build_inters_data(args.data, seed=0, held_out_per_task=args.held_out_per_task,
                             max_train_per_task=args.max_train_per_task, held_out_tasks=args.held_out_tasks)
    save_inters_data(data, args.output_data, overwrite=True)

    test = load_beir(Path(args.data) / "beir" / "scifact", "test")
    texts = dict(zip(test.doc_ids, test.doc_texts))
    qids = list(test.qrels)[: args.queries]
    retriever = Retriever(None, signals=["bm25"]).fit(test.doc_ids, test.doc_texts, show_progress=False)
    first = retriever.search([test.queries[q] for q in qids], mode="bm25", k=args.depth)
    first_stage = ndcg10(first, qids, test.qrels)
    print(f"BM25 top-{args.depth} on {len(qids)} queries: nDCG@10 {first_stage:.4f}", flush=True)

    results: dict = {"slice": {"queries": len(qids), "depth": args.depth}, "first_stage_ndcg@10": first_stage,
                     "settings": {
        "model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised), bf16 inference",
        "first_stage": f"BM25 (flagstone, k1 1.2, b 0.75), top {args.depth}, first {len(qids)} SciFact test "
                       "queries in qrels order",
        "reranker_max_length": args.max_length,
        "listwise": {"window": args.window, "step": args.step, "unparsed": "counted; the window keeps its order"},
        "pairwise": "every pair of the candidates in both orders; score = wins",
        "data": data.settings, "counts": data.counts(), "quick": args.quick, "torch_threads": args.threads}}

    def write(status: str) -> None:
        """Save what is measured so far (a run cut short still leaves its figures)."""
        results["status"] = status
        results["settings"]["wall_seconds"] = time.perf_counter() - wall
        save_results("inters", table(results, args), inters=results)

    # order of work (the machine is shared; a run cut short keeps what it finished): pointwise and listwise
    # reranking before tuning, the tuning, the same after; then the per-task scores; pairwise (the dearest) last
    results["rerank_before"], results["rerank_after"] = {}, {}
    cheap = [m for m in args.modes if m != "pairwise"]
    for mode in cheap:
        rerank_mode(mode, "smollm2-135m-instruct", test, qids, first, texts, args, results["rerank_before"])
        write(f"reranking ({mode} before done)")

    lora = LoraSettings(rank=args.rank, alpha=2 * args.rank, max_length=args.train_max_length,
                        batch_size=args.batch_size)
    config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate, warmup_ratio=0.05,
                            precision="bfloat16", seed=0)
    tuned = tune_lora("smollm2-135m-instruct", data.train, args.output_model, lora=lora, config=config, overwrite=True)
    losses = tuned.training.losses
    print(f"tuned: {tuned.training.steps} steps, {tuned.training.seconds:.0f}s, loss {losses[0]:.3f} -> "
          f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", flush=True)
    results["training"] = {"rows": tuned.rows_used, "rows_too_long": tuned.rows_too_long,
                           "steps": tuned.training.steps, "seconds": tuned.training.seconds, "loss_first": losses[0],
                           "loss_last10": sum(losses[-10:]) / len(losses[-10:]), "losses": losses}
    results["settings"]["lora"] = {"rank": args.rank, "alpha": 2 * args.rank, "epochs": args.epochs,
                                   "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                                   "max_length": args.train_max_length}
    write("tuned")
    for mode in cheap:
        rerank_mode(mode, args.output_model, test, qids, first, texts, args, results["rerank_after"])
        write(f"reranking ({mode} after done)")
    for key, model in (("tasks_before", "smollm2-135m-instruct"), ("tasks_after", args.output_model)):
        lm = load_causal_lm(model, dtype="bfloat16")
        results[key] = {t: s.as_dict() for t, s in score_rows(lm, data.held_out, max_new_tokens=16).items()}
        print(key, json.dumps(results[key]), flush=True)
        del lm
        write(f"{key} measured")
    if "pairwise" in args.modes:
        for key, model in (("rerank_before", "smollm2-135m-instruct"), ("rerank_after", args.output_model)):
            rerank_mode("pairwise", model, test, qids, first, texts, args, results[key])
            write(f"reranking (pairwise {key.split('_')[1]} done)")
    write("complete")
    return 0


def table(results: dict, args) -> str:
    """The markdown table of what ``results`` holds so far."""
    sl = results["slice"]
    lines = [f"SciFact test, first {sl['queries']} queries, BM25 top {sl['depth']} reranked by SmolLM2-135M-Instruct "
             f"(nDCG@10; BM25 alone on the same slice {results['first_stage_ndcg@10']:.4f}). Status: "
             f"{results['status']}.", "",
             "| mode | before tuning | after INTERS LoRA | ms/query before | ms/query after |", "|---|---|---|---|---|"]
    before, after = results.get("rerank_before", {}), results.get("rerank_after", {})

    def cell(row: dict | None, key: str, fmt: str) -> str:
        return format(row[key], fmt) if row else "not run"

    for mode in args.modes:
        b, a = before.get(mode), after.get(mode)
        extra = ""
        if mode == "listwise":
            extra = " (unparsed windows " + " -> ".join(f"{r['unparsed']}/{r['windows']}" for r in (b, a) if r) + ")"
        lines.append(f"| {mode}{extra} | {cell(b, 'ndcg@10', '.4f')} | {cell(a, 'ndcg@10', '.4f')} | "
                     f"{cell(b, 'ms_per_query', '.0f')} | {cell(a, 'ms_per_query', '.0f')} |")
    tasks_before, tasks_after = results.get("tasks_before", {}), results.get("tasks_after", {})
    lines += ["", f"Held-out rows per task ({args.held_out_per_task} each; other rows of the same task were trained "
              f"on, except for the tasks marked unseen, held out whole: {', '.join(args.held_out_tasks) or 'none'}):",
              "", "| task | metric | before | after |", "|---|---|---|---|"]
    for task in TASK_ORDER:
        b, a = tasks_before.get(task), tasks_after.get(task)
        if b is None and a is None:
            continue
        name = f"{task} (unseen)" if task in args.held_out_tasks else task
        lines.append(f"| {name} | {(b or a)['metric']} | {cell(b, 'score', '.3f')} | {cell(a, 'score', '.3f')} |")
    if "training" in results:
        tr, lo = results["training"], results["settings"]["lora"]
        lines += ["", f"LoRA rank {lo['rank']}, {tr['steps']} steps over {tr['rows']} rows ({tr['rows_too_long']} "
                  f"longer than {lo['max_length']} tokens left out), {tr['seconds'] / 60:.1f} min, loss "
                  f"{tr['loss_first']:.3f} -> {tr['loss_last10']:.3f}; 2 shared CPU cores."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
