"""Replay Search-o1's first scored decision (search again or answer, after the first search) on stored traces,
with each wording of an evidence line that was tried, to see whether the model's choice follows the evidence.

    python benchmarks/search_o1_decision_replay.py            # reads rag_qa/search_o1_no_evidence_check.jsonl

For each HotpotQA question of a run made without the evidence check, the decision prompt is rebuilt from the
stored reasoning (up to the second search) and scored again with the bundled model: as stored (must
reproduce the stored scores), and with every evidence line below added before "Next step:". The line is
computed from the chunks the first search read (never from the gold supporting facts). Reported per wording:
how often the model chooses "search" when the first search missed a supporting fact vs when it found them,
and when the line fires vs when it does not. The wordings were all tried on these same 100 questions, so the
chosen one (``names``, Search-o1's default) is picked on the data it is reported on; the held-out rerun of
rag_qa.py is the fair figure. Writes benchmarks/results/search_o1_decision_replay.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, first_search_or_answer_decision, save_results

from flagstone.evaluation.qa import load_hotpotqa
from flagstone.retrieval.lexical import LexicalTokenizer


def content_words(question: str, tokenizer: LexicalTokenizer) -> list[tuple[str, list[str]]]:
    """Each word of the question with its terms (stop words have none), in order, once each."""
    words = dict.fromkeys(question.replace("?", " ").replace(",", " ").split())
    return [(w, terms) for w in words if (terms := tokenizer(w))]


def wordings(question: str, read: set[str], tokenizer: LexicalTokenizer) -> dict[str, tuple[str, bool]]:
    """Every evidence line tried: name -> (line, whether it reports something missing)."""
    from flagstone.rag.search_o1 import NOT_MENTIONED, unmentioned_names

    names = unmentioned_names(question, read, tokenizer)
    words = [w for w, terms in content_words(question, tokenizer) if not any(t in read for t in terms)]
    return {
        "none": ("", False),
        "names": (NOT_MENTIONED.format(names=", ".join(names)) if names else "", bool(names)),
        "names_or_all": (NOT_MENTIONED.format(names=", ".join(names)) if names else
                         "\n\nThe documents found so far mention every name in the question.", bool(names)),
        "words": (NOT_MENTIONED.format(names=", ".join(words)) if words else
                  "\n\nThe documents found so far mention every part of the question.", bool(words)),
        "words_bracketed": ("\n\n(Question words not yet found in any document read: " + ", ".join(words) + ".)"
                            if words else "\n\n(Every word of the question appears in the documents read.)",
                            bool(words)),
        "coverage_count": (f"\n\n(The documents read cover all but {len(words)} of the question's words.)",
                           bool(words)),
    }


def share(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(RESULTS / "rag_qa" / "search_o1_no_evidence_check.jsonl"))
    parser.add_argument("--data", default=str(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-n", type=int, default=None, help="only the first n questions (a quick check)")
    parser.add_argument("--report", action="store_true", help="only rewrite the summary from the saved rows")
    args = parser.parse_args()
    if args.report:
        saved = RESULTS / "search_o1_decision_replay.json"
        if not saved.is_file():
            print(f"no saved replay at {saved}: run without --report first", file=sys.stderr)
            return 2
        report(json.loads(saved.read_text()))
        return 0
    run = Path(args.run)
    if not run.is_file() or not Path(args.data).is_file():
        print(f"needs {run} (rag_qa.py --pipelines search_o1_no_evidence_check) and {args.data}", file=sys.stderr)
        return 2
    from flagstone.models.embedder import Embedder
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.generator import LocalGenerator
    from flagstone.rag import ContextIndex
    from flagstone.rag.search_o1 import ACTIONS, BEGIN_SEARCH, NEXT_STEP, SearchO1

    examples = {e.id: e for e in load_hotpotqa(args.data)}
    generator = LocalGenerator(threads=args.threads)
    pipeline, tokenizer = SearchO1(generator), LexicalTokenizer()
    embedder, cache = Embedder(show_progress=False), EmbeddingCache()  # rag_qa's
    started, rows = time.perf_counter(), []
    for record in list(map(json.loads, run.read_text().splitlines()))[: args.n]:
        stored = first_search_or_answer_decision(record)
        if stored is None or not record["search_recalls"]:
            continue
        example = examples[record["id"]]
        context = ContextIndex.build(example.documents, embedder=embedder, cache=cache)  # rag_qa's chunks
        first = next(s for s in record["trace"]["steps"] if s["kind"] == "retrieve")
        read = {t for c in first["chunk_ids"] for t in tokenizer(context.by_id[c].text)}
        reasoning = next(n for n in record["trace"]["notes"] if n.startswith("reasoning: "))[len("reasoning: "):]
        second = reasoning.find(BEGIN_SEARCH, reasoning.find(BEGIN_SEARCH) + 1)
        before = (reasoning if second < 0 else reasoning[:second]).rstrip()
        row = {"id": record["id"], "first_search_missed": record["search_recalls"][0] < 1.0,
               "stored_log_odds": stored["scores"]["search"] - stored["scores"]["answer"]}
        for name, (line, fires) in wordings(example.question, read, tokenizer).items():
            choice = generator.choose(pipeline._messages(example.question, before + line + NEXT_STEP), ACTIONS)
            row[name] = {"log_odds": choice.scores[ACTIONS[0]] - choice.scores[ACTIONS[1]], "fires": fires}
        rows.append(row)
        print(f"{len(rows)} {row['id']} missed={row['first_search_missed']} "
              + " ".join(f"{k}={v['log_odds']:+.2f}" for k, v in row.items() if isinstance(v, dict)), flush=True)
    out = {"run": str(run.relative_to(RESULTS)) if run.is_relative_to(RESULTS) else str(run),
           "chosen": "names", "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    report(out)
    return 0


def report(out: dict) -> None:
    """Summarise the replayed rows (``out["rows"]``) into the .json and .md."""
    rows = out["rows"]
    diffs = [abs(r["none"]["log_odds"] - r["stored_log_odds"]) for r in rows]
    reproduced, close = max(diffs), sum(d <= 0.01 for d in diffs)
    summary = {}
    for name in rows[0]:
        if not isinstance(rows[0][name], dict):
            continue
        search = {r["id"]: r[name]["log_odds"] > 0 for r in rows}
        summary[name] = {
            "search_after_miss": share([search[r["id"]] for r in rows if r["first_search_missed"]]),
            "search_after_hit": share([search[r["id"]] for r in rows if not r["first_search_missed"]]),
            "line_fires": sum(r[name]["fires"] for r in rows),
            "search_when_fires": share([search[r["id"]] for r in rows if r[name]["fires"]]),
            "search_when_not": share([search[r["id"]] for r in rows if not r[name]["fires"]]),
            "missed_when_fires": share([r["first_search_missed"] for r in rows if r[name]["fires"]]),
            "missed_when_not": share([r["first_search_missed"] for r in rows if not r[name]["fires"]]),
        }
    missed = sum(r["first_search_missed"] for r in rows)
    out.update({"questions": len(rows), "first_search_missed": missed, "max_abs_diff_from_stored": reproduced,
                "reproduced_within_0.01": close, "wordings": summary})
    fmt = lambda v: "" if v is None else f"{v:.0%}"  # noqa: E731
    lines = [f"First scored decision of {len(rows)} questions replayed from `{out['run']}` (first search missed a "
             f"supporting fact in {missed}); the stored log-odds are reproduced within 0.01 in {close} of them (at most "
             f"{reproduced:.2f} off).", "",
             "| wording | search after miss | search after hit | line fires | search when it fires | when not | "
             "missed when it fires | when not |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {fmt(s['search_after_miss'])} | {fmt(s['search_after_hit'])} | {s['line_fires']} | "
              f"{fmt(s['search_when_fires'])} | {fmt(s['search_when_not'])} | {fmt(s['missed_when_fires'])} | "
              f"{fmt(s['missed_when_not'])} |" for name, s in summary.items()]
    lines += ["", "Every wording was tried on these same questions; `names` is the line of Search-o1's evidence_check "
              "(chosen among them on these questions). Reproduce: `python benchmarks/search_o1_decision_replay.py`."]
    save_results("search_o1_decision_replay", "\n".join(lines), search_o1_decision_replay=out)


if __name__ == "__main__":
    sys.exit(main())
