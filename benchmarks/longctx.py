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

from _common import (
    RESULTS,
    SHARED_DATA,
    Output,
    hotpot_documents,
    joined_abstracts,
    needle_turn_ids,
    refused,
    save_results,
)

RATIOS = (2, 4, 8)
WINDOW = 256
MODEL_DIR = RESULTS.parent / "models" / "smollm2-beacon-mixed"


# -- text kinds (loaders in _common.py, shared with longctx_extensible.py) ------------------------------
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
    from flagstone.longctx.beacon import BEACON_LAYOUT, BeaconConfig, BeaconLM

    if refused([Output("--output", args.output, MODEL_DIR, BEACON_LAYOUT)], args.overwrite):
        return 2
    import torch

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
    t.add_argument("--output", default=str(MODEL_DIR), help="where the trained beacon is saved")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output you named (the default folder is this script's to replace)")
    e = sub.add_parser("eval", help="perplexity, memory and needle in a haystack")
    add_eval_arguments(e)
    sub.add_parser("fold", help="fold the latest longctx_lora.json and longctx_extensible.json into "
                                "longctx.{json,md} without re-running anything (after either sibling benchmark ran)")
    args = parser.parse_args()
    return {"train": train, "eval": evaluate, "fold": fold}[args.stage](args)


def add_eval_arguments(e) -> None:
    e.add_argument("--beacon", default=str(MODEL_DIR), help="folder of the trained beacon")
    e.add_argument("--eval-tokens", type=int, default=2048)
    e.add_argument("--eval-sequences", type=int, default=8)
    e.add_argument("--held-out-essays", type=int, default=9)
    e.add_argument("--niah-lengths", default="1024,2048,4096")
    e.add_argument("--niah-depths", default="0.1,0.5,0.9")
    e.add_argument("--refill-windows", type=int, default=2)
    e.add_argument("--skip-niah", action="store_true")
    e.add_argument("--niah-methods", default="full,truncation,sink_recent,beacon,beacon_refill",
                   help="needle methods to run (comma-separated)")
    e.add_argument("--streaming-sink", type=int, default=4, help="sink tokens of sink_recent (StreamingLLM: 4)")
    e.add_argument("--streaming-chunk", type=int, default=32, help="tokens sink_recent reads at a time")
    e.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")




# -- memory ----------------------------------------------------------------------------------------------
MMAP_THRESHOLD = "65536"  # glibc: tensors above 64 KB get their own mapping, returned to the OS when freed


def _proc_status_kb(field: str) -> int:
    import re

    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_rss_mb(run) -> float:
    """Peak resident memory above the level before ``run()``, in MB: the peak-RSS mark is reset through
    /proc/self/clear_refs, freed memory is handed back first (malloc_trim), and MALLOC_MMAP_THRESHOLD_ keeps
    large tensors in their own mappings, so what is counted is what the run allocated (KV, activations)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_kb("VmRSS")
    run()
    return (_proc_status_kb("VmHWM") - before) * 1024 / 1e6


# -- evaluation ------------------------------------------------------------------------------------------
def rerun_with_mmap_threshold() -> None:
    """Restart this process with MALLOC_MMAP_THRESHOLD_ set (glibc reads it only at start), which
    :func:`peak_rss_mb` needs; a no-op once it is set."""
    import os

    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        print(f"re-running with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} for the peak-memory column", flush=True)
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})


def evaluate(args) -> int:
    import os

    rerun_with_mmap_threshold()

    import torch

    from flagstone.longctx.beacon import BeaconConfig, BeaconLM
    from flagstone.longctx.streaming import SinkRecentLM, beacon_kv_entries
    from flagstone.longctx.training import token_segments
    from flagstone.models.causal_lm import load_causal_lm

    wall = time.perf_counter()
    torch.manual_seed(0)
    lm = load_causal_lm()
    tokenizer, model = lm.tokenizer, lm.model
    kinds = text_kinds(args.held_out_essays)
    window, sink_tokens = WINDOW, 1
    if args.quick:
        args.eval_tokens, args.eval_sequences, args.niah_lengths, args.niah_depths = 600, 1, "600", "0.5"
    texts = {"essays": token_segments(kinds["essays_eval"], tokenizer, args.eval_tokens)[: args.eval_sequences],
             "heldout_kind": token_segments(kinds[HELD_OUT_KIND], tokenizer, args.eval_tokens)[: args.eval_sequences]}
    if args.quick:
        trained = BeaconLM(model, BeaconConfig(window=window, ratios=RATIOS, ratio=4, sink=sink_tokens)).eval()
        training = {"note": "--quick: untrained beacon"}
    else:
        trained = BeaconLM.load_beacon(model, args.beacon).eval()
        training = json.loads((Path(args.beacon) / "training.json").read_text())
        training.pop("losses_all", None)
        sink_tokens = trained.config.sink
        if trained.config.window != window:
            print(f"the beacon in {args.beacon} uses window {trained.config.window}, not {window}", file=sys.stderr)
            return 2
    per_entry = trained.kv_bytes_per_entry()
    tokens = args.eval_tokens

    def truncated_logits(t):
        return torch.cat([model(t[:, i:i + window]).logits for i in range(0, t.shape[1], window)], dim=1)

    def truncated_read(t):
        for i in range(0, t.shape[1], window):
            model(t[:, i:i + window], logits_to_keep=1)

    methods = [("full", None, lambda t: model(t).logits, lambda t: model(t, logits_to_keep=1), tokens),
               ("truncation", None, truncated_logits, truncated_read, min(window, tokens))]
    for r in RATIOS:
        budget = beacon_kv_entries(tokens, window, r, sink_tokens)
        streaming = SinkRecentLM(model, budget=budget, sink=args.streaming_sink, chunk=args.streaming_chunk)
        methods.append(("sink_recent", r, lambda t, s=streaming: s.feed(t)[0],
                        lambda t, s=streaming: s.feed(t, logits=False), budget))
    for r in RATIOS:
        methods.append(("beacon", r, lambda t, r=r: trained.feed(t, ratio=r)[0],
                        lambda t, r=r: trained.feed(t, ratio=r, logits=False), beacon_kv_entries(tokens, window, r,
                                                                                                 sink_tokens)))
    rows = []
    for method, ratio, logits_of, read, entries in methods:
        row = {"method": method, "ratio": ratio, "kv_entries": entries, "kv_mb": entries * per_entry / 1e6}
        seconds, counted, load = 0.0, 0, []
        for kind, sequences in texts.items():
            nll, n = 0.0, 0
            for ids in sequences:
                t = torch.tensor([ids])
                load.append(os.getloadavg()[0])
                start = time.perf_counter()
                with torch.no_grad():
                    logits = logits_of(t)
                seconds += time.perf_counter() - start
                counted += len(ids)
                nll += float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), t[0, 1:], reduction="sum"))
                n += len(ids) - 1
            row[f"ppl_{kind}"] = math.exp(nll / n)
        with torch.no_grad():
            row["peak_mb"] = peak_rss_mb(lambda: read(torch.tensor([texts["essays"][0]])))
        row["ms_per_token"] = 1000 * seconds / counted
        row["load_average_1min"] = round(sum(load) / len(load), 2)
        rows.append(row)
        print(f"{method:12s} ratio={ratio} essays={row['ppl_essays']:.2f} heldout={row['ppl_heldout_kind']:.2f} "
              f"kv={row['kv_mb']:.1f}MB peak={row['peak_mb']:.1f}MB {row['ms_per_token']:.1f}ms/token "
              f"load={row['load_average_1min']}", flush=True)

    results = {"model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised to float32)", "window": window,
               "sink_tokens_beacon": sink_tokens, "sink_tokens_sink_recent": args.streaming_sink,
               "sink_recent_chunk": args.streaming_chunk,
               "attention_variant": ("raw tokens do not attend to their own window's beacons (two passes: a window "
                                     "is read raw, then compressed); the paper's final design lets them"),
               "eval": {"tokens_per_sequence": tokens, "sequences_per_kind": {k: len(v) for k, v in texts.items()},
                        "essays": f"last {args.held_out_essays} Paul Graham essays (never trained on)",
                        "heldout_kind": f"{HELD_OUT_KIND} abstracts (beir/{HELD_OUT_KIND}, no corpus of this kind "
                                        "in training)"},
               "kv_accounting": ("kv_entries: the most KV entries any token attends to while the sequence is read "
                                 "(memory + open window for beacons, sink + recent for sink_recent, the window for "
                                 "truncation, every token for full); sink_recent gets the budget of the beacon with "
                                 "the same ratio; kv_mb = entries x bytes per entry"),
               "peak_memory": ("peak_mb: peak RSS above the level before reading one 2,048-token essay sequence "
                               "(no per-token logits kept; only the last token's), /proc/self/clear_refs + VmHWM, "
                               "MALLOC_MMAP_THRESHOLD_=65536, malloc_trim before"),
               "rows": rows, "niah": [], "refill_windows": args.refill_windows, "training": training,
               "cpu_note": (f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads (OMP_NUM_THREADS="
                            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}): ms_per_token is comparable only within "
                            "this file; load_average_1min is the machine's 1-minute load average during each row "
                            "(anything else running shows there)"),
               "wall_s": round(time.perf_counter() - wall, 1), "quick": args.quick}
    fold_in_peers(results)
    if not args.quick:  # the perplexity rows are kept even if the needle part is cut short
        save_results("longctx", markdown(results, args) + "\n\nNeedle in a haystack: not run yet.",
                     longctx=results)
    if not args.skip_niah:
        for length in (int(x) for x in args.niah_lengths.split(",")):  # saved length by length
            results["niah"] += needle_runs(args, model, tokenizer, trained, kinds, sink_tokens, length)
            results["wall_s"] = round(time.perf_counter() - wall, 1)
            if not args.quick:
                save_results("longctx", markdown(results, args), longctx=results)
    results["wall_s"] = round(time.perf_counter() - wall, 1)
    table = markdown(results, args)
    if args.quick:
        print(table)
        return 0
    save_results("longctx", table, longctx=results)
    return 0


def fold(args) -> int:
    """Refresh longctx.{json,md} with the sibling benchmarks' latest results; the rows measured here stay."""
    path = RESULTS / "longctx.json"
    if not path.is_file():
        print(f"{path} not found: run 'longctx.py eval' first", file=sys.stderr)
        return 2
    results = json.loads(path.read_text())
    results["rows"] = [r for r in results["rows"] if "source" not in r]  # the previous fold's rows
    for key in ("lora_extension", "lora_extension_source", "extensible_benchmark_rows", "extensible_source"):
        results.pop(key, None)
    fold_in_peers(results)
    save_results("longctx", markdown(results, args) + ("" if results["niah"] else
                                                        "\n\nNeedle in a haystack: not run yet."), longctx=results)
    return 0


def fold_if_present() -> None:
    """What the sibling benchmarks call after their final write: keep longctx.{json,md} in step with them."""
    if (RESULTS / "longctx.json").is_file():
        fold(None)


def fold_in_peers(results: dict) -> None:
    """The LoRA context-extension and extensible-embedding results of the sibling benchmarks, when present."""
    lora = RESULTS / "longctx_lora.json"
    if lora.is_file():
        data = json.loads(lora.read_text())
        results["lora_extension"] = data.get("lora_extension") or {k: data.get(k) for k in ("before", "after")}
        results["lora_extension_source"] = lora.name
    extensible = RESULTS / "longctx_extensible.json"
    if extensible.is_file():
        # only the extender's own rows join the table: that benchmark's baselines are built its own way
        # (its sink_recent is not this file's), so they stay beside it under their own key
        data = json.loads(extensible.read_text())
        rows = data.get("rows", [])
        results["rows"] += [{**r, "source": extensible.name} for r in rows if str(r.get("method", "")).startswith(
            "extensible")]
        results["extensible_benchmark_rows"] = [r for r in rows if not str(r.get("method", "")).startswith(
            "extensible")]
        results["extensible_source"] = extensible.name


def greedy_tokens(feed, ids: list[int], new_tokens: int, stops: set[int]) -> list[int]:
    """Greedy decoding through ``feed(ids, state) -> (logits, state)``."""
    import torch

    with torch.no_grad():
        logits, state = feed(ids, None)
        out: list[int] = []
        for _ in range(new_tokens):
            token = int(logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
            logits, state = feed([token], state)
    return out


def needle_runs(args, model, tokenizer, trained, kinds, sink_tokens, length: int) -> list[dict]:
    """Passkey-style needle in a haystack of held-out essays: full, truncation to one window, sink + recent at
    the beacon r4 budget, beacon r4, and beacon r4 + refilling of ``--refill-windows`` windows chosen by the
    question's attention over their raw KV (window_scores_by_raw_attention); the older beacon-attention choice
    is recorded beside it."""
    import torch

    from flagstone.evaluation.niah import DEFAULT_NEEDLE, build_haystack
    from flagstone.longctx.streaming import SinkRecentLM, beacon_kv_entries

    window = WINDOW

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    head, question = needle_turn_ids(tokenizer)
    new_tokens = 32
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    essays = kinds["essays_eval"]
    records = []
    for depth in (float(x) for x in args.niah_depths.split(",")):
        text = build_haystack(essays, length, depth, lambda t: len(encode(t)))
        haystack = head + encode(text)
        needle_window = (len(head) + len(encode(text[: text.index(DEFAULT_NEEDLE.fact)]))) // window
        room = window - len(head) - len(question)
        budget = beacon_kv_entries(len(haystack) + len(question), window, 4, sink_tokens)
        streaming = SinkRecentLM(model, budget=budget, sink=args.streaming_sink, chunk=args.streaming_chunk)
        info: dict = {}

        def full(h=haystack):
            return greedy_truncated(model, h + question, new_tokens)

        def refilled(h=haystack, info=info):
            _, state = trained.feed(h, keep_raw=True, logits=False, ratio=4)
            raw_scores = trained.window_scores_by_raw_attention(state, question)
            beacon_scores = trained.window_scores_by_attention(state, question)
            picked = raw_scores.argsort(descending=True)[: args.refill_windows].tolist()
            info.update(windows=len(state.segments), refilled_windows=picked,
                        beacon_attention_would_pick=beacon_scores.argsort(descending=True)[
                            : args.refill_windows].tolist())
            refill = trained.refill(state, picked)
            return greedy_tokens(lambda ids, s: trained.feed(ids, s if s is not None else refill, ratio=4),
                                 question, new_tokens, stops)

        cases = {
            "full": full,
            "truncation": lambda h=haystack, room=room: greedy_truncated(
                model, head + h[len(head):][-room:] + question, new_tokens),
            "sink_recent": lambda h=haystack, s=streaming: greedy_tokens(s.feed, h + question, new_tokens, stops),
            "beacon": lambda h=haystack: greedy_tokens(lambda ids, s: trained.feed(ids, s, ratio=4),
                                                       h + question, new_tokens, stops),
            "beacon_refill": refilled,
        }
        for method, run in cases.items():
            if method not in args.niah_methods.split(","):
                continue
            with torch.no_grad():
                answer = tokenizer.decode(run(), skip_special_tokens=True)
            record = {"method": method, "length": length, "depth": depth,
                      "correct": DEFAULT_NEEDLE.is_found(answer), "answer": answer[:80]}
            if method == "sink_recent":
                record["kv_entries"] = budget
            if method == "beacon_refill":
                compressed = needle_window < info["windows"]
                record.update(needle_window=needle_window, needle_in_compressed_window=compressed,
                              needle_window_refilled=needle_window in info["refilled_windows"], **info)
            records.append(record)
            print(f"niah {method:14s} length={length} depth={depth} correct={record['correct']} "
                  f"{answer[:50]!r}" + (f" needle window {needle_window} of {info['windows']} refilled "
                                        f"{info['refilled_windows']} (beacon attention: "
                                        f"{info['beacon_attention_would_pick']})" if method == "beacon_refill"
                                        else ""), flush=True)
    return records


def greedy_truncated(model, ids: list[int], new_tokens: int) -> list[int]:
    """The plain model's greedy continuation of ``ids`` (full attention over them)."""
    import torch

    out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
    return out[0, len(ids):].tolist()


def markdown(results: dict, args) -> str:
    rows = results["rows"]
    lines = [f"Window {results['window']} raw tokens; {results['eval']['tokens_per_sequence']}-token sequences "
             f"({results['eval']['sequences_per_kind']}); held-out kind: {results['eval']['heldout_kind']}.", "",
             "| method | ratio | ppl essays | ppl held-out kind | KV entries | KV MB | peak MB | ms / token |",
             "|---|---|---|---|---|---|---|---|"]
    def cell(row: dict, key: str, digits: int) -> str:  # "-" where a row has no such figure (None or absent)
        value = row.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    for r in rows:
        lines.append(f"| {r['method']} | {r.get('ratio') or '-'} | {cell(r, 'ppl_essays', 2)} | "
                     f"{cell(r, 'ppl_heldout_kind', 2)} | {r.get('kv_entries', '-')} | {cell(r, 'kv_mb', 1)} | "
                     f"{cell(r, 'peak_mb', 1)} | {cell(r, 'ms_per_token', 1)} |")
    folded = sorted({r["source"] for r in rows if "source" in r})
    if folded:
        lines += ["", f"Rows from {', '.join(folded)} (extensible*) follow that benchmark's protocol: each window is "
                      "a fresh forward over the positions kept, so their peak MB holds no KV cache and their "
                      "ms / token its own reading; compare them with that file's sink_recent rows "
                      "(extensible_benchmark_rows), which are built the same way."]
    by = {(r["method"], r.get("ratio")): r for r in rows if "source" not in r}
    if ("full", None) in by and ("truncation", None) in by:
        lines.append("")
        for kind in ("essays", "heldout_kind"):
            full, trunc = by[("full", None)][f"ppl_{kind}"], by[("truncation", None)][f"ppl_{kind}"]
            cells = []
            for r in RATIOS:
                if ("beacon", r) in by and trunc != full:
                    cells.append(f"r{r} {(trunc - by[('beacon', r)][f'ppl_{kind}']) / (trunc - full):.0%}")
            lines.append(f"Truncation-to-full gap recovered by the beacon ({kind}): " + ", ".join(cells) + ".")
    losses = results.get("training", {}).get("losses") or []
    if len(losses) >= 50:  # whether the beacon's training had levelled off
        training = results["training"]
        lines += ["", f"Beacon training: {training['steps']} steps in {training['seconds'] / 60:.0f} min; mean loss "
                      f"{sum(losses[:50]) / 50:.2f} over the first 50 steps, {sum(losses[-50:]) / 50:.2f} over the "
                      "last 50."]
    niah = results["niah"]
    if niah:
        lengths = sorted({n["length"] for n in niah})
        lines += ["", "| needle | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for method in dict.fromkeys(n["method"] for n in niah):
            cells = []
            for length in lengths:
                hits = [n["correct"] for n in niah if n["method"] == method and n["length"] == length]
                cells.append(f"{sum(hits)}/{len(hits)}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        refills = [n for n in niah if n["method"] == "beacon_refill"]
        compressed = [n for n in refills if n["needle_in_compressed_window"]]
        old = [n for n in compressed if n["needle_window"] in n["beacon_attention_would_pick"]]
        refill_windows = results.get("refill_windows", getattr(args, "refill_windows", None))
        count = f"{refill_windows} windows" if refill_windows is not None else "windows"  # unrecorded in old files
        lines += ["", (f"Refilling ({count}, chosen by the question's attention over raw KV) "
                       f"picked the needle's window in {sum(n['needle_window_refilled'] for n in compressed)} of "
                       f"{len(compressed)} haystacks whose needle was compressed (the beacon-attention choice: "
                       f"{len(old)} of {len(compressed)}); {len(refills) - len(compressed)} needles were in the open "
                       "window.")]
    if "lora_extension" in results:
        lines += ["", f"LoRA context extension ({results['lora_extension_source']}, folded in as lora_extension):",
                  "", *lora_table(results["lora_extension"])]
    return "\n".join(lines)


def lora_table(extension: dict) -> list[str]:
    """Perplexity and needle hits by length for each LoRA-extension model that was evaluated."""
    models = {name: extension[name] for name in ("native_reference", "before", "rope_only", "after", "after_short")
              if extension.get(name)}
    if not models:
        return ["(no model evaluated yet)"]
    lengths = sorted({int(n) for row in models.values() for n in row}, key=int)
    lines = ["| model | " + " | ".join(f"ppl {n}" for n in lengths) + " | "
             + " | ".join(f"needle {n}" for n in lengths) + " |", "|---|" + "---|" * (2 * len(lengths))]
    for name, row in models.items():
        ppl = [f"{row[str(n)]['ppl']:.2f}" if str(n) in row else "-" for n in lengths]
        hits = [f"{row[str(n)]['needle_correct']}/{row[str(n)]['needle_total']}"
                if "needle_correct" in row.get(str(n), {}) else "-" for n in lengths]
        lines.append(f"| {name} | " + " | ".join(ppl + hits) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
