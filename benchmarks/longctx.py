"""Long context at equal KV memory: full attention, truncation, attention sinks + recent window (StreamingLLM)
and trained Activation Beacons on SmolLM2-135M, on essays and on a kind of text held out from training;
then needle in a haystack with beacon + refilling (ACRE-style).

    python benchmarks/longctx.py train [--steps 150] [--train-minutes 40]   # beacon on mixed text
    python benchmarks/longctx.py eval                                       # -> results/longctx.{json,md}
    python benchmarks/longctx.py eval --quick                               # a tiny run to check the script

Text kinds (all under ../shared/data):
- training mix: the Paul Graham essays except the last ``--held-out-essays``, HotpotQA's paragraphs
  (qa/hotpotqa sample, each record's 10 paragraphs joined), SciFact abstracts and CISI abstracts
  (beir/*, consecutive abstracts joined into long documents); an equal number of segments from each;
- evaluation: the held-out essays (``ppl_essays``) and Cranfield's aeronautics abstracts
  (``ppl_heldout_kind``: a corpus never trained on, lower-cased and tokenised text unlike any training kind).

Every compressed method gets the same KV budget as the beacon it is compared with: the most KV entries any
token attends to while the sequence is read (see flagstone.longctx.streaming.beacon_kv_entries).
If benchmarks/results/longctx_lora.json or longctx_extensible.json exist they are folded into the results.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from _common import RESULTS, SHARED_DATA, save_results

RATIOS = (2, 4, 8)
WINDOW = 256
MODEL_DIR = RESULTS.parent / "models" / "smollm2-beacon-mixed"


# -- text kinds ----------------------------------------------------------------------------------------
def joined_abstracts(corpus: Path, min_chars: int, limit: int | None = None) -> list[str]:
    """Consecutive abstracts of a BEIR corpus (file order) joined into documents of at least ``min_chars``."""
    docs, current = [], []
    with corpus.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            row = json.loads(line)
            text = (row.get("title", "") + ". " + row["text"]).strip(". ") if row.get("title") else row["text"]
            if not text.strip():
                continue
            current.append(text.strip())
            if sum(len(t) for t in current) >= min_chars:
                docs.append("\n\n".join(current))
                current = []
    return docs


def hotpot_documents(path: Path) -> list[str]:
    """Each HotpotQA record's 10 Wikipedia paragraphs (title line + sentences) as one document."""
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        context = json.loads(line)["context"]
        paragraphs = [f"{title}\n{''.join(sentences)}" for title, sentences in zip(context["title"],
                                                                                   context["sentences"])]
        docs.append("\n\n".join(paragraphs))
    return docs


def text_kinds(held_out_essays: int) -> dict[str, list[str]]:
    from flagstone.evaluation.niah import load_essays

    essays = load_essays(SHARED_DATA / "longctx" / "paulgraham_essays")
    return {
        "essays_train": essays[:-held_out_essays],
        "essays_eval": essays[-held_out_essays:],
        "hotpotqa": hotpot_documents(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"),
        "scifact": joined_abstracts(SHARED_DATA / "beir" / "scifact" / "corpus.jsonl", 8000, limit=1500),
        "cisi": joined_abstracts(SHARED_DATA / "beir" / "cisi" / "corpus.jsonl", 8000),
        "cranfield": joined_abstracts(SHARED_DATA / "beir" / "cranfield" / "corpus.jsonl", 24000),
    }


TRAIN_KINDS = ("essays_train", "hotpotqa", "scifact", "cisi")
HELD_OUT_KIND = "cranfield"


def training_segments(kinds: dict[str, list[str]], tokenizer, length: int, per_kind: int, seed: int):
    """``per_kind`` segments of ``length`` tokens from each training kind, shuffled together."""
    import random

    from flagstone.longctx.training import token_segments

    mixed, counts = [], {}
    for kind in TRAIN_KINDS:
        segments = token_segments(kinds[kind], tokenizer, length)
        random.Random(seed).shuffle(segments)
        counts[kind] = min(per_kind, len(segments))
        mixed += segments[:per_kind]
    random.Random(seed + 1).shuffle(mixed)
    return mixed, counts


# -- training ------------------------------------------------------------------------------------------------
def train(args) -> int:
    import torch

    from flagstone.longctx.beacon import BeaconConfig, BeaconLM
    from flagstone.longctx.training import train_beacon
    from flagstone.models.causal_lm import load_causal_lm
    from flagstone.training.loop import TrainingConfig

    torch.manual_seed(0)
    lm = load_causal_lm()
    kinds = text_kinds(args.held_out_essays)
    segments, counts = training_segments(kinds, lm.tokenizer, WINDOW * args.segment_windows, args.per_kind, 0)
    print(f"training segments per kind: {counts}", flush=True)
    beacon = BeaconLM(lm.model, BeaconConfig(window=WINDOW, ratios=RATIOS, ratio=4, sink=args.sink))
    config = TrainingConfig(epochs=max(1, math.ceil(args.steps / len(segments))), max_steps=args.steps,
                            learning_rate=args.learning_rate, warmup_ratio=0.05, seed=0, precision="float32",
                            checkpoint_every=10, show_progress=False)
    deadline = time.perf_counter() + args.train_minutes * 60
    log: list[dict] = []
    start = time.perf_counter()

    class Budget(Exception):
        pass

    def on_step(step: int, loss: float) -> None:
        log.append({"step": step, "loss": loss, "s": round(time.perf_counter() - start, 1)})
        print(f"step {step} loss {loss:.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if time.perf_counter() > deadline:
            raise Budget

    checkpoint = Path(args.output).with_name(Path(args.output).name + "-ckpt")
    try:
        result = train_beacon(beacon, segments, config, checkpoint_dir=checkpoint, sample_ratio=args.sample_ratio,
                              on_step=on_step)
        steps, losses = result.steps, result.losses
    except Budget:
        steps, losses = log[-1]["step"], [e["loss"] for e in log]
    beacon.eval()
    beacon.save_beacon(args.output, overwrite=True)
    info = {"steps": steps, "planned_steps": args.steps, "seconds": round(time.perf_counter() - start, 1),
            "segments_per_kind": counts, "segment_tokens": WINDOW * args.segment_windows,
            "learning_rate": args.learning_rate, "ratios": list(RATIOS), "ratio_sampling": args.sample_ratio,
            "sink": args.sink, "train_kinds": list(TRAIN_KINDS), "held_out_kind": HELD_OUT_KIND,
            "losses": losses, "stopped_by_time_budget": steps < args.steps}
    (Path(args.output) / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k != "losses"}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("train", help="train beacons on the mixed text")
    t.add_argument("--steps", type=int, default=150, help="optimiser steps (one segment each)")
    t.add_argument("--train-minutes", type=float, default=40.0, help="stop early past this budget")
    t.add_argument("--per-kind", type=int, default=90, help="segments drawn from each training kind")
    t.add_argument("--segment-windows", type=int, default=4, help="windows per training segment")
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--sample-ratio", choices=("step", "window"), default="step")
    t.add_argument("--sink", type=int, default=1)
    t.add_argument("--held-out-essays", type=int, default=9)
    t.add_argument("--output", default=str(MODEL_DIR))
    e = sub.add_parser("eval", help="perplexity, memory and needle in a haystack")
    add_eval_arguments(e)
    args = parser.parse_args()
    return train(args) if args.stage == "train" else evaluate(args)


def add_eval_arguments(e) -> None:
    e.add_argument("--beacon", default=str(MODEL_DIR), help="folder of the trained beacon")
    e.add_argument("--eval-tokens", type=int, default=2048)
    e.add_argument("--eval-sequences", type=int, default=8)
    e.add_argument("--held-out-essays", type=int, default=9)
    e.add_argument("--niah-lengths", default="1024,2048,4096")
    e.add_argument("--niah-depths", default="0.1,0.5,0.9")
    e.add_argument("--refill-windows", type=int, default=2)
    e.add_argument("--skip-niah", action="store_true")
    e.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")


def evaluate(args) -> int:
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
