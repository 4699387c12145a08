"""Where MemoRAG's seconds go, and which speed settings pay, measured in the same conditions: on the first
HotpotQA questions (each with its own 10 paragraphs, so each builds its own memory), every setting answers
each question in one process, one after the other, the order rotated from question to question so that a
machine whose load changes (a shared one) favours none of them.

    python benchmarks/memorag_speed.py --limit 5 --threads 1        # -> benchmarks/results/memorag_speed.{json,md}

Per setting: seconds per question split into memorize (the gists), clues, retrieval and answer; prompt and
generated tokens; supporting-fact recall, chunks and tokens read; and whether the gists, clues and answer
equal the plain setting's (the lossless speed options must give the same replies). From the plain setting's
generator calls a least-squares fit splits a call's seconds into a cost per prompt token (reading) and per
generated token (decoding). ``piece_tokens_2048`` changes what MemoRAG does (one gist per 2,048 tokens
instead of 1,024): it is there to show what a coarser memory saves and costs, not as a lossless option.
The first four settings are those of the first run (gists, replies run to their token limit);
``gists_stop_on_repeat``, ``context`` and ``context_int8_clues`` change the replies (a looping reply is cut,
the clues are written from the context itself, by the float32 or an int8 copy of the model), so their
"same replies" column is expected to read 0 and the recall column says what the change costs or gains.

    python benchmarks/memorag_speed.py --limit 5 --threads 2 \
        --settings plain,gists_stop_on_repeat,context,context_int8_clues --out memorag_speed_context
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from _common import SHARED_DATA, save_results

SETTINGS = {
    # the settings of the first run (2026-12-04): gists, replies run to their token limit
    "plain": {"memory": "gists", "stop_on_repeat": 0},
    "prompt_lookup_4": {"memory": "gists", "stop_on_repeat": 0, "prompt_lookup": 4},
    "gist_batch_8": {"memory": "gists", "stop_on_repeat": 0, "gist_batch": 8},
    "piece_tokens_2048": {"memory": "gists", "stop_on_repeat": 0, "piece_tokens": 2048},
    # MemoRAG's defaults since: gist and clue replies end when they repeat 16 tokens (memory="auto" then picks
    # the context when it fits, as in "context" below)
    "gists_stop_on_repeat": {"memory": "gists"},
    # the context itself as the memory (what memory="auto" picks when it fits the window): no gists
    "context": {"memory": "context"},
    # ... with the clues written by the same model in int8 (a cheaper memory model; the answer stays float32)
    "context_int8_clues": {"memory": "context", "memory_generator": "int8"},
}
STAGES = {"memorize": ("gist",), "clues": ("clues",), "retrieval": ("search",), "answer": ("answer",)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"))
    parser.add_argument("--limit", type=int, default=5, help="questions (default: 5)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default="memorag_speed", help="results name (default: memorag_speed)")
    args = parser.parse_args()
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = set(names) - set(SETTINGS)
    if unknown or "plain" not in names:
        parser.error(f"settings must include plain and come from {', '.join(SETTINGS)}; unknown: {sorted(unknown)}")
    if not args.out.replace("_", "").replace("-", "").isalnum():
        parser.error("--out must be a plain name (letters, digits, _ and -)")
    if not os.path.isfile(args.data):
        print(f"HotpotQA sample not found at {args.data}", file=sys.stderr)
        return 2

    import torch

    from flagstone.evaluation.qa import load_hotpotqa, support_recall
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder
    from flagstone.models.generator import LocalGenerator
    from flagstone.rag import ContextIndex, MemoRAG

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    generator = LocalGenerator()
    int8 = LocalGenerator(dtype="int8") if any(SETTINGS[n].get("memory_generator") == "int8" for n in names) else None
    embedder, cache = Embedder(show_progress=False), EmbeddingCache()
    examples = load_hotpotqa(args.data, limit=args.limit)
    rows: list[dict] = []
    for qi, example in enumerate(examples):
        context = ContextIndex.build(example.documents, embedder=embedder, cache=cache)
        order = names[qi % len(names):] + names[:qi % len(names)]
        for name in order:
            setting = dict(SETTINGS[name])
            if setting.get("memory_generator") == "int8":
                setting["memory_generator"] = int8
            answer = MemoRAG(generator, k=3, **setting).ask(example.question, context)
            steps = answer.trace.steps
            chunks = [context.by_id[c] for c in answer.trace.retrieved]
            rows.append({
                "question": qi, "id": example.id, "setting": name, "seconds": round(answer.seconds, 2),
                "stages": {stage: round(sum(s.seconds for s in steps if s.name in which), 2)
                           for stage, which in STAGES.items()},
                "calls": [{"name": s.name, "prompt_tokens": s.prompt_tokens, "generated_tokens": s.completion_tokens,
                           "seconds": round(s.seconds, 3)} for s in steps if s.kind == "generate"],
                "support_recall": support_recall(example.supporting, chunks), "chunks": len(chunks),
                "tokens": answer.trace.tokens, "answer": answer.answer, "clues": answer.trace.clues,
                "gists": [s.output for s in steps if s.name == "gist"]})
            print(f"  q{qi} {name}: {answer.seconds:.1f}s {rows[-1]['stages']}", flush=True)
    load_after = os.getloadavg()

    plain = {r["question"]: r for r in rows if r["setting"] == "plain"}
    summary = {}
    for name in names:
        mine = [r for r in rows if r["setting"] == name]
        summary[name] = {
            "s_per_q": float(np.mean([r["seconds"] for r in mine])),
            **{f"{stage}_s_per_q": float(np.mean([r["stages"][stage] for r in mine])) for stage in STAGES},
            "prompt_tokens_per_q": float(np.mean([sum(c["prompt_tokens"] for c in r["calls"]) for r in mine])),
            "generated_tokens_per_q": float(np.mean([sum(c["generated_tokens"] for c in r["calls"]) for r in mine])),
            "support_recall": float(np.mean([r["support_recall"] for r in mine])),
            "chunks_per_q": float(np.mean([r["chunks"] for r in mine])),
            "tokens_per_q": float(np.mean([r["tokens"] for r in mine])),
            "same_replies_as_plain": sum((r["gists"], r["clues"], r["answer"]) == (plain[r["question"]]["gists"],
                                        plain[r["question"]]["clues"], plain[r["question"]]["answer"]) for r in mine),
            "n_questions": len(mine)}
    # seconds of a generator call = a * prompt tokens + b * generated tokens (plain setting; batched gists share
    # their batch's time, so only the plain calls are fitted)
    calls = [c for r in rows if r["setting"] == "plain" for c in r["calls"]]
    x = np.array([[c["prompt_tokens"], c["generated_tokens"]] for c in calls], dtype=float)
    fit = np.linalg.lstsq(x, np.array([c["seconds"] for c in calls]), rcond=None)[0]
    cost = {"ms_per_prompt_token": float(fit[0] * 1000), "s_per_generated_token": float(fit[1]), "calls": len(calls)}
    settings = {"threads": torch.get_num_threads(), "load_average_1_5_15_before": load_before,
                "load_average_1_5_15_after": load_after, "k": 3,
                "generator": "SmolLM2-135M-Instruct (bundled GGUF Q4_1, dequantised to float32), greedy"}

    lines = ["| setting | s / q | memorize | clues | retrieval | answer | prompt tokens / q | generated tokens / q | "
             "supporting-fact recall | chunks / q | tokens / q | same replies as plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['s_per_q']:.1f} | {s['memorize_s_per_q']:.1f} | {s['clues_s_per_q']:.1f} | "
                     f"{s['retrieval_s_per_q']:.2f} | {s['answer_s_per_q']:.1f} | {s['prompt_tokens_per_q']:.0f} | "
                     f"{s['generated_tokens_per_q']:.0f} | {s['support_recall']:.3f} | {s['chunks_per_q']:.1f} | "
                     f"{s['tokens_per_q']:.0f} | {s['same_replies_as_plain']}/{s['n_questions']} |")
    lines += ["", f"Cost of a generator call (least squares over the plain setting's {cost['calls']} calls): "
              f"{cost['ms_per_prompt_token']:.1f} ms per prompt token + {cost['s_per_generated_token']:.3f} s per "
              "generated token.", "",
              f"{len(examples)} HotpotQA questions, each setting on each question in one process, order rotated; "
              f"{settings['threads']} torch thread(s); load average (1, 5, 15 min) "
              f"{', '.join(f'{v:.2f}' for v in load_before)} before and {', '.join(f'{v:.2f}' for v in load_after)} "
              f"after, on 2 CPU cores. {settings['generator']}; retrieval hybrid MiniLM + BM25, k=3."]
    save_results(args.out, "\n".join(lines), **{args.out: {"settings": settings, "summary": summary,
                                                           "cost_model": cost, "rows": rows}})
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"finished in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    sys.exit(code)
