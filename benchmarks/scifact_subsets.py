"""Where does SciFact fine-tuning help? Every model train_scifact.py trained, scored per test query, overall and
on two subsets, each against the base model with a paired randomization test.

    python benchmarks/scifact_subsets.py [--models benchmarks/models] [--skip-m3]

- seen_docs: test queries with at least one relevant document that is also a positive of some SciFact train
  query (the model saw that document as a positive while training);
- unseen_docs: test queries none of whose relevant documents is a train positive;
- test queries whose text is also a train query's text (after lower-casing and collapsing spaces) are
  dropped from every figure here and listed in the results.

Scoring is train_scifact.py's: bfloat16 inference, max length 256, exact search over the whole corpus,
nDCG@10 per query; BM25 is the lexical baseline. The p-value is two-sided, Fisher's paired randomization
test with 10,000 sign flips (flagstone.evaluation.significance). Writes benchmarks/results/scifact_subsets.md
and sets the ``subsets`` entry of benchmarks/results/train_scifact.json (the rest of that file is kept).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import (RESULTS, SHARED_DATA, compare_on_subsets, load_scifact_with_train, per_query_ndcg,
                     set_result_entry, split_test_queries)

from flagstone.errors import DataError
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import Retriever

BASE = "all-MiniLM-L6-v2"
# (system name, model folder under --models or the base preset, retrieval mode)
SYSTEMS = [
    ("fine-tuned dense", "scifact-minilm-finetuned", "dense"),
    ("LM-Cocktail merged", "scifact-minilm-merged", "dense"),
    ("M3 dense", "scifact-minilm-m3", "dense"),
    ("M3 sparse", "scifact-minilm-m3", "sparse"),
    ("M3 ColBERT", "scifact-minilm-m3", "colbert"),
    ("M3 all three", "scifact-minilm-m3", "all"),
]


def compare(base: dict[str, float], other: dict[str, float], subsets: dict[str, list[str]]) -> dict[str, dict]:
    comparison = compare_on_subsets(base, other, subsets)
    empty = [name for name, c in comparison.items() if c is None]
    if empty:  # every subset of the full test split has queries; an empty one is a data error
        raise DataError(f"no test queries in subset(s) {', '.join(empty)}")
    return comparison


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--models", default=str(RESULTS.parent / "models"),
                        help="the folder train_scifact.py saved its models in (default: benchmarks/models)")
    parser.add_argument("--skip-m3", action="store_true", help="leave out the M3 model (its heads are not cached)")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, _ = loaded
    models = Path(args.models)
    systems = [s for s in SYSTEMS if not (args.skip_m3 and s[1] == "scifact-minilm-m3")]
    missing = sorted({folder for _, folder, _ in systems if not (models / folder / "config.json").is_file()})
    if missing:
        print(f"{models}: no trained {', '.join(missing)}; run benchmarks/train_scifact.py first", file=sys.stderr)
        return 2
    subsets = split_test_queries(Path(args.data), test.qrels, train_qrels)
    ids = subsets["overall"]
    cache = EmbeddingCache()
    print(f"{len(ids)} test queries ({len(subsets['duplicates'])} duplicated in train dropped): "
          f"{len(subsets['seen_docs'])} seen_docs, {len(subsets['unseen_docs'])} unseen_docs", flush=True)

    def scores_of(model: str, modes: list[str]) -> dict[str, dict[str, float]]:
        model_signals = [m for m in modes if m not in ("all", "bm25")]
        embedder = Embedder(model, dtype="bfloat16", show_progress=True) if model_signals or "all" in modes else None
        signals = (["dense", "sparse", "colbert"] if "all" in modes else model_signals) or ["bm25"]
        # only dense vectors are cached (train_scifact.py caches the same ones)
        retriever = Retriever(embedder, signals=signals, cache=cache if signals == ["dense"] else None)
        retriever.fit(test.doc_ids, test.doc_texts)
        return {mode: per_query_ndcg(retriever, test.queries, ids, test.qrels, mode) for mode in modes}

    per_system: dict[str, dict[str, float]] = {}
    per_system["base (MiniLM dense)"] = scores_of(BASE, ["dense"])["dense"]
    per_system["BM25"] = scores_of(BASE, ["bm25"])["bm25"]
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for name, folder, mode in systems:
        by_folder.setdefault(folder, []).append((name, mode))
    for folder, entries in by_folder.items():
        scored = scores_of(str(models / folder), [mode for _, mode in entries])
        for name, mode in entries:
            per_system[name] = scored[mode]
        print(f"scored {folder}", flush=True)
    base = per_system["base (MiniLM dense)"]
    comparisons = {name: compare(base, scores, subsets) for name, scores in per_system.items()
                   if name != "base (MiniLM dense)"}
    headline = "fine-tuned dense"
    out = {"method": "Fisher paired randomization test, two-sided, 10,000 sign flips, seed 0",
           "queries": {name: len(q) for name, q in subsets.items()}, "duplicates_dropped": subsets["duplicates"],
           "definition": "seen_docs: a relevant document of the test query is a positive of some train query",
           "best_system": headline,
           **{name: {"base": c["base"], "best": c["best"], "p_value": c["p_value"]}
              for name, c in comparisons[headline].items()},
           "systems": comparisons, "wall_s": round(time.perf_counter() - started, 1)}
    lines = [f"{len(ids)} SciFact test queries ({len(subsets['duplicates'])} that duplicate a train query dropped: "
             f"{', '.join(subsets['duplicates']) or 'none'}); seen_docs {len(subsets['seen_docs'])}, unseen_docs "
             f"{len(subsets['unseen_docs'])}. nDCG@10, delta against the base model, two-sided paired randomization p.",
             "", "| system | overall | seen_docs | unseen_docs |", "|---|---|---|---|"]
    base_row = "| base (MiniLM dense) | " + " | ".join(
        f"{comparisons[headline][s]['base']:.4f}" for s in ("overall", "seen_docs", "unseen_docs")) + " |"
    lines.append(base_row)
    for name, comparison in comparisons.items():
        cells = [f"{c['best']:.4f} ({c['delta']:+.4f}, p={c['p_value']:.3g})"
                 for c in (comparison[s] for s in ("overall", "seen_docs", "unseen_docs"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nWall time {out['wall_s'] / 60:.1f} min. Models from {models}.")
    table = "\n".join(lines)
    (RESULTS / "scifact_subsets.md").write_text(table + "\n")
    set_result_entry("train_scifact", "subsets", out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
