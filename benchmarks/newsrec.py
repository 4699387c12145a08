"""News recommendation on synthetic MIND data: how much encoder work do GateFormer and SFI save, and at what cost
in AUC / MRR / nDCG?

Data: ``flagstone.newsrec.synthetic`` (planted subcategory interests, popularity and temporal drift), written as
real MIND folders (news.tsv + behaviors.tsv) and read back; train = days 0-5, dev = day 6. Sizes and seed are
options and recorded in the results.

Models, all at the same training budget (same data, same steps, same batch size and negatives, same seed):
- ``base``: a small transformer news encoder, additive-attention user encoder, dot product; no gate, no selection;
- ``gateformer``: the same, with a gate keeping the top ``--gate-k`` tokens of each clicked title;
- ``sfi``: per candidate, the top ``--select-k`` history items (cheap selector), encoded and matched token by
  token; ``sfi-all-history``: the same model with every history item selected (what the selection saves);
- baselines: random, popularity (smoothed click rate in the training split), topic (history share of the
  candidate's subcategory; it reads the planted labels, so it is an oracle-like reference, not a competitor).

Metrics: the MIND leaderboard's (per impression AUC, MRR, nDCG@5, nDCG@10, averaged) on the dev split.
Encoder work per impression: title tokens (and titles) through the transformer while scoring, with no news
vectors cached between impressions. ms per impression: scoring the first ``--timing-impressions`` dev
impressions in batches of 16, repeated ``--timing-repeats`` times interleaved across models, median (one
torch thread; the machine is shared, so treat small differences as noise).

    .venv/bin/python benchmarks/newsrec.py [--train-impressions 4000] [--steps 300]

Writes benchmarks/results/newsrec.json (``rows``: model, auc, mrr, ndcg@5, ndcg@10, tokens_encoded,
ms_per_impression, ...) and newsrec.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from _common import save_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--train-impressions", type=int, default=4000)
    parser.add_argument("--dev-impressions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per model (the equal budget)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the library's")
    parser.add_argument("--gate-k", type=int, default=4)
    parser.add_argument("--select-k", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["base", "gateformer", "sfi", "sfi-all-history"],
                        choices=["base", "gateformer", "sfi", "sfi-all-history"])
    parser.add_argument("--timing-impressions", type=int, default=300)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--word-vectors", default=None, metavar="MODEL",
                        help="start word embeddings from this embedding model (e.g. all-MiniLM-L6-v2); default random")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--name", default="newsrec", help="results file stem (default: newsrec)")
    args = parser.parse_args(argv)

    import torch

    from flagstone.newsrec.baselines import evaluate_baseline
    from flagstone.newsrec.mind import load_mind
    from flagstone.newsrec.recommender import NewsRecommender
    from flagstone.newsrec.settings import NewsRecConfig, NewsRecTraining
    from flagstone.newsrec.synthetic import SyntheticMindConfig, write_synthetic_mind

    torch.set_num_threads(args.threads)
    data_config = SyntheticMindConfig(n_users=args.users, train_impressions=args.train_impressions,
                                      dev_impressions=args.dev_impressions, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="flagstone-newsrec-") as tmp:
        write_synthetic_mind(tmp, data_config)
        train, dev = load_mind(Path(tmp) / "train"), load_mind(Path(tmp) / "dev")
    print(f"train: {train.describe()}\ndev: {dev.describe()}", file=sys.stderr)

    rows = []
    for name in ("random", "popularity", "topic"):
        metrics = evaluate_baseline(name, dev, train=train, seed=args.seed)
        rows.append({"model": name, **metrics.as_dict(), "tokens_encoded": 0.0, "items_encoded": 0.0,
                     "ms_per_impression": None, "train_steps": 0, "train_seconds": 0.0})
        print(f"{name}: AUC {metrics.auc:.4f}", file=sys.stderr)

    training = NewsRecTraining(batch_size=args.batch_size, max_steps=args.steps, epochs=1000, seed=args.seed,
                               show_progress=False,
                               **({"learning_rate": args.learning_rate} if args.learning_rate else {}))
    command = " ".join(["python", "benchmarks/newsrec.py", *(argv or sys.argv[1:])])

    def write(final: bool) -> None:
        """The results so far: after each model (partial, ms from the dev evaluation pass) and at the end."""
        base = next((r for r in rows if r["model"] == "base"), None)
        lines = [f"# News recommendation on synthetic MIND data (seed {args.seed})", "",
                 f"Train: {train.describe()}. Dev: {dev.describe()}. Every model: {args.steps} steps of "
                 f"{args.batch_size} clicks x (1 + {training.negatives} negatives), learning rate "
                 f"{training.learning_rate:g}, seed {args.seed}, word embeddings "
                 f"{'from ' + args.word_vectors if args.word_vectors else 'random'}, {args.threads} torch "
                 "thread(s), CPU.", ""]
        if not final:
            done = [r["model"] for r in rows if r["model"] in args.models]
            lines += [f"PARTIAL: models finished so far: {', '.join(done) or 'none'} of {', '.join(args.models)}; "
                      "ms / impression from the single dev evaluation pass, not the interleaved timing.", ""]
        lines += ["| model | AUC | MRR | nDCG@5 | nDCG@10 | tokens encoded / impression | titles encoded / impression | "
                  "ms / impression |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ms = f"{r['ms_per_impression']:.2f}" if r["ms_per_impression"] is not None else "-"
            tokens = f"{r['tokens_encoded']:.0f}" if r["tokens_encoded"] else "-"
            items = f"{r['items_encoded']:.1f}" if r["items_encoded"] else "-"
            if base is not None and r["tokens_encoded"] and r is not base:
                tokens += f" ({r['tokens_encoded'] / base['tokens_encoded']:.0%} of base)"
            lines.append(f"| {r['model']} | {r['auc']:.4f} | {r['mrr']:.4f} | {r['ndcg@5']:.4f} | "
                         f"{r['ndcg@10']:.4f} | {tokens} | {items} | {ms} |")
        timing_note = (f"ms: median of {args.timing_repeats} interleaved runs on the first {args.timing_impressions} "
                       "dev impressions, batches of 16." if final else "")
        lines += ["", "topic reads the planted subcategory labels: a reference for how much signal there is, not a "
                  "text model. Tokens and titles: through the transformer while scoring, no caching between "
                  "impressions. " + timing_note, "", f"Command: `{command}`"]
        save_results(args.name, "\n".join(lines), **{args.name: {
            "partial": not final, "rows": rows,
            "data": {"generator": "flagstone.newsrec.synthetic", **asdict(data_config), "train": train.describe(),
                     "dev": dev.describe()},
            "training": {**asdict(training), "steps": args.steps, "word_vectors": args.word_vectors},
            "torch_threads": args.threads, "command": command}})

    word_embedder = None
    if args.word_vectors:
        from flagstone.models.embedder import Embedder

        word_embedder = Embedder(args.word_vectors, show_progress=False)
    models = {}
    for name in args.models:
        kind = "sfi" if name.startswith("sfi") else name
        config = NewsRecConfig(kind=kind, gate_k=args.gate_k,
                               select_k=NewsRecConfig().max_history if name == "sfi-all-history" else args.select_k)
        recommender = NewsRecommender.create(train, config, seed=args.seed, word_embedder=word_embedder)
        result = recommender.fit(train, training)
        evaluation = recommender.evaluate(dev)
        first = statistics.fmean(result.losses[:20])
        last = statistics.fmean(result.losses[-20:])
        rows.append({"model": name, **evaluation.metrics.as_dict(), "tokens_encoded": evaluation.cost.tokens_encoded,
                     "items_encoded": evaluation.cost.items_encoded,
                     "ms_per_impression": round(evaluation.cost.ms_per_impression, 3),
                     "train_steps": result.steps, "train_seconds": round(result.seconds, 1),
                     "loss_first_20": round(first, 4), "loss_last_20": round(last, 4),
                     "gate_k": config.gate_k if kind == "gateformer" else None,
                     "select_k": config.select_k if kind == "sfi" else None})
        models[name] = recommender
        print(f"{name}: {result.steps} steps in {result.seconds:.0f} s, loss {first:.3f} -> {last:.3f}, "
              f"AUC {evaluation.metrics.auc:.4f}, {evaluation.cost.tokens_encoded:.0f} tokens/impression",
              file=sys.stderr)
        write(final=False)

    # speed: interleaved repeats over the same impressions, median
    timing = dev.head(args.timing_impressions)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.timing_repeats):
        for name, recommender in models.items():
            start = time.perf_counter()
            recommender.scores(timing, batch_size=16)
            times[name].append(1000.0 * (time.perf_counter() - start) / len(timing.impressions))
    for row in rows:
        if row["model"] in times:
            row["ms_per_impression_eval_pass"] = row["ms_per_impression"]
            row["ms_per_impression"] = round(statistics.median(times[row["model"]]), 3)
            row["ms_per_impression_runs"] = [round(t, 3) for t in times[row["model"]]]

    write(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
