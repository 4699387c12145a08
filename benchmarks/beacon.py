"""Can SmolLM2-135M read past its window through trained beacons? Train the beacon parameters on essays, then
compare perplexity on held-out essays for full attention, truncation to the window, and beacons (untrained
and trained) at ratios 2, 4 and 8; then a needle-in-a-haystack run for truncation, beacon and beacon +
refilling (ACRE).

    python benchmarks/beacon.py [--window 256] [--train-minutes 45] [--eval-tokens 2048] [--quick]

Essays from ../shared/data/longctx/paulgraham_essays in name order: the last ``--held-out`` are never trained
on. "Truncation" reads each window on its own (the model sees only the current window); "full" is the plain
model over the whole sequence (SmolLM2 has 8,192 positions, so evaluation sequences fit). Writes
benchmarks/results/beacon.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, Output, needle_turn_ids, refused, save_results

RATIOS = (2, 4, 8)
DEFAULT_OUTPUT = RESULTS.parent / "models" / "smollm2-beacon"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=256, help="raw tokens per window (default: 256)")
    parser.add_argument("--train-minutes", type=float, default=45.0, help="training budget (default: 45)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="passes over the training segments, each with fresh random ratios (the time budget "
                             "stops training early if needed)")
    parser.add_argument("--segment-windows", type=int, default=4, help="windows per training segment")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-tokens", type=int, default=2048, help="tokens per evaluation sequence")
    parser.add_argument("--eval-sequences", type=int, default=8, help="held-out sequences to evaluate")
    parser.add_argument("--held-out", type=int, default=9, help="essays kept out of training")
    parser.add_argument("--niah-lengths", default="1024,2048,4096")
    parser.add_argument("--niah-depths", default="0.1,0.5,0.9")
    parser.add_argument("--sink", type=int, default=1, help="raw tokens kept in front of the memory (default: 1)")
    parser.add_argument("--refill-windows", type=int, default=2, help="windows refilled by ACRE")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where the trained beacon is saved")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output you named (the default folder is this script's to replace)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip perplexity and training: load the beacon saved in --output and the perplexity rows "
                             "of the last benchmarks/results/beacon.json, run only the needle-in-a-haystack part")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")
    args = parser.parse_args()
    from flagstone.longctx.beacon import BEACON_LAYOUT, BeaconConfig, BeaconLM

    if not (args.reuse or args.quick) and refused([Output("--output", args.output, DEFAULT_OUTPUT, BEACON_LAYOUT)],
                                                  args.overwrite):
        return 2

    import torch

    from flagstone.evaluation.niah import DEFAULT_NEEDLE, build_haystack, load_essays
    from flagstone.longctx.training import token_segments, train_beacon
    from flagstone.models.causal_lm import load_causal_lm
    from flagstone.training.loop import TrainingConfig

    essays_dir = SHARED_DATA / "longctx" / "paulgraham_essays"
    if not essays_dir.is_dir():
        print(f"essays not found at {essays_dir}", file=sys.stderr)
        return 2
    if args.quick:
        args.window, args.train_minutes, args.eval_tokens, args.eval_sequences = 64, 0.3, 256, 2
        args.output = tempfile.mkdtemp(prefix="beacon-quick-")  # never over the real run's beacon
        args.niah_lengths, args.niah_depths = "256", "0.5"
    wall = time.perf_counter()
    torch.manual_seed(0)
    lm = load_causal_lm()
    tokenizer, model = lm.tokenizer, lm.model
    essays = load_essays(essays_dir)
    train_texts, held_texts = essays[: -args.held_out], essays[-args.held_out:]
    eval_ids = token_segments(held_texts, tokenizer, args.eval_tokens)[: args.eval_sequences]
    if not eval_ids:
        print("held-out essays are shorter than --eval-tokens", file=sys.stderr)
        return 2

    def perplexity(run) -> tuple[float, float, int]:
        """(ppl, ms per token, KV bytes at the end) of ``run(ids) -> (logits, kv_bytes)``."""
        losses, tokens, seconds, kv = [], 0, 0.0, 0
        for ids in eval_ids:
            t = torch.tensor([ids])
            start = time.perf_counter()
            with torch.no_grad():
                logits, kv = run(t)
            seconds += time.perf_counter() - start
            losses.append(float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), t[0, 1:],
                                                                  reduction="sum")))
            tokens += len(ids) - 1
        return math.exp(sum(losses) / tokens), 1000 * seconds / (tokens + len(eval_ids)), kv

    def full(t):
        out = model(t, use_cache=True)
        cache = out.past_key_values
        kv = sum(x.numel() * x.element_size() for layer in cache.layers for x in (layer.keys, layer.values))
        return out.logits, kv

    def truncated(t):
        pieces = [model(t[:, i:i + args.window]).logits for i in range(0, t.shape[1], args.window)]
        last = min(t.shape[1], args.window) if t.shape[1] % args.window == 0 else t.shape[1] % args.window
        return torch.cat(pieces, dim=1), BeaconLM(model).kv_bytes_full(last)

    def with_beacon(beacon, ratio):
        def run(t):
            logits, state = beacon.feed(t, ratio=ratio)
            return logits, state.kv_bytes()
        return run

    rows = []

    def row(method, ratio, result):
        ppl, ms, kv = result
        rows.append({"method": method, "ratio": ratio, "ppl": ppl, "kv_bytes": kv, "ms_per_token": ms})
        print(f"{method:18s} ratio={ratio} ppl={ppl:.2f} kv={kv / 1e6:.1f} MB {ms:.1f} ms/token", flush=True)

    previous_path = RESULTS / "beacon.json"
    if args.reuse:
        if not previous_path.is_file() or not (Path(args.output) / "beacon.safetensors").is_file():
            print(f"--reuse needs {previous_path} and a saved beacon in {args.output}: run without --reuse first",
                  file=sys.stderr)
            return 2
        previous = json.loads(previous_path.read_text())
        if previous["window"] != args.window:
            print(f"the saved run used --window {previous['window']}", file=sys.stderr)
            return 2
        rows, training = previous["rows"], previous["training"]
        trained = BeaconLM.load_beacon(model, args.output).eval()
        if trained.config.window != args.window:
            print(f"the beacon in {args.output} was trained with window {trained.config.window}, not {args.window}",
                  file=sys.stderr)
            return 2
    else:
        row("full", None, perplexity(full))
        row("truncation", None, perplexity(truncated))
        untrained = BeaconLM(model, BeaconConfig(window=args.window, ratios=RATIOS, ratio=4, sink=args.sink)).eval()
        for r in RATIOS:
            row("beacon_untrained", r, perplexity(with_beacon(untrained, r)))

        # training: segments of several windows from the training essays, random ratio per window
        segments = token_segments(train_texts, tokenizer, args.window * args.segment_windows)
        np.random.default_rng(0).shuffle(segments)
        trained = BeaconLM(model, BeaconConfig(window=args.window, ratios=RATIOS, ratio=4, sink=args.sink))
        deadline = time.perf_counter() + args.train_minutes * 60

        class Budget(Exception):
            pass

        losses: list[float] = []

        def stop_at_budget(step, loss):
            losses.append(loss)
            if time.perf_counter() > deadline:
                raise Budget

        # float32 as in the published runs (TrainingConfig's default became bf16, the embedders' tuned setting)
        config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate, warmup_ratio=0.05, seed=0,
                                precision="float32")
        start = time.perf_counter()
        try:
            train_beacon(trained, segments, config, on_step=stop_at_budget)
        except Budget:
            pass  # the time budget is spent: evaluate what was learnt so far
        train_seconds = time.perf_counter() - start
        trained.eval()
        trained.save_beacon(args.output, overwrite=True)
        for r in RATIOS:
            row("beacon_trained", r, perplexity(with_beacon(trained, r)))
        training = {"steps": len(losses), "seconds": round(train_seconds, 1), "segments_available": len(segments),
                    "segment_tokens": args.window * args.segment_windows, "epochs": args.epochs,
                    "learning_rate": args.learning_rate, "ratios": list(RATIOS), "loss_first": losses[:5],
                    "loss_last": losses[-5:], "train_essays": len(train_texts), "held_out_essays": len(held_texts)}

    # needle in a haystack past the window: one chat turn whose user message is the haystack and the question,
    # and the answer's first words after it, passkey style (the model continues them with the passphrase)
    niah = []

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(text: str) -> int:
        return len(encode(text))

    head, question = needle_turn_ids(tokenizer)
    new_tokens = 32

    def greedy(ids):
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
        return out[0, len(ids):].tolist()

    for length in (int(x) for x in args.niah_lengths.split(",")):
        for depth in (float(x) for x in args.niah_depths.split(",")):
            text = build_haystack(essays[-args.held_out:], length, depth, count)
            haystack = head + encode(text)
            needle_window = (len(head) + count(text[: text.index(DEFAULT_NEEDLE.fact)])) // args.window
            room = args.window - len(head) - len(question)
            picked: list[int] = []
            cases = {
                "full": lambda h=haystack: greedy(h + question),
                "truncation": lambda h=haystack, room=room: greedy(head + h[len(head):][-room:] + question),
                "beacon": lambda h=haystack: trained.generate(h + question, max_new_tokens=new_tokens)[0],
            }

            def refilled(h=haystack, picked=picked):
                _, state = trained.feed(h, keep_raw=True, logits=False)
                scores = trained.window_scores_by_attention(state, question)
                picked += scores.argsort(descending=True)[: args.refill_windows].tolist()
                return trained.generate(question, max_new_tokens=new_tokens, state=trained.refill(state, picked))[0]

            cases["beacon_refill"] = refilled
            for method, run in cases.items():
                with torch.no_grad():
                    answer = tokenizer.decode(run(), skip_special_tokens=True)
                record = {"method": method, "length": length, "depth": depth,
                          "correct": DEFAULT_NEEDLE.is_found(answer), "answer": answer[:80]}
                if method == "beacon_refill":  # did the question's attention pick the window with the needle?
                    record.update(needle_window=needle_window, refilled_windows=picked,
                                  needle_window_refilled=needle_window in picked)
                niah.append(record)
                print(f"niah {method:14s} length={length} depth={depth} correct={record['correct']} "
                      f"{answer[:60]!r}" + (f" needle window {needle_window} refilled {picked}"
                                            if method == "beacon_refill" else ""), flush=True)

    full_ppl = rows[0]["ppl"]
    trunc_ppl = rows[1]["ppl"]
    trained4 = next(r["ppl"] for r in rows if r["method"] == "beacon_trained" and r["ratio"] == 4)
    recovered = (trunc_ppl - trained4) / (trunc_ppl - full_ppl) if trunc_ppl != full_ppl else float("nan")
    results = {"model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised to float32)", "window": args.window,
               "rows": rows, "niah": niah,
               "gap_recovered_at_ratio_4": recovered,
               "training": training,
               "eval": {"sequences": len(eval_ids), "tokens_per_sequence": args.eval_tokens},
               "wall_s": round(time.perf_counter() - wall, 1), "reused_training": args.reuse}
    lines = ["| method | ratio | perplexity | KV MB | ms / token |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio'] or '-'} | {r['ppl']:.2f} | {r['kv_bytes'] / 1e6:.1f} | "
                     f"{r['ms_per_token']:.1f} |")
    lines += ["", (f"Gap between truncation and full attention recovered by trained beacons at ratio 4: "
                  f"{recovered:.0%}."), "", "| NIAH method | " + " | ".join(args.niah_lengths.split(",")) + " |",
              "|---|" + "---|" * len(args.niah_lengths.split(","))]
    for method in ("full", "truncation", "beacon", "beacon_refill"):
        cells = []
        for length in (int(x) for x in args.niah_lengths.split(",")):
            hits = [n["correct"] for n in niah if n["method"] == method and n["length"] == length]
            cells.append(f"{sum(hits)}/{len(hits)}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    picks = [n["needle_window_refilled"] for n in niah if n["method"] == "beacon_refill"]
    lines += ["", (f"Refilling picked the window holding the needle in {sum(picks)} of {len(picks)} haystacks "
                  f"({args.refill_windows} windows refilled each).")]
    if args.quick:
        print("\n".join(lines))
        return 0
    save_results("beacon", "\n".join(lines), beacon=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
