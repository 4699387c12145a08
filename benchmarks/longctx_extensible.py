"""Extensible embeddings on SmolLM2-135M at an equal number of LM input positions: a trained extender (the LM
frozen) against truncation and attention sinks + recent window, on held-out essays and on a text kind held out
from training (Cranfield abstracts).

    python benchmarks/longctx_extensible.py [--train-minutes 10] [--eval-sequences 2] [--quick]

Protocol (the beacon benchmark's): sequences of 2,048 tokens read in windows of 256; every token of a window is
predicted with that window's raw tokens before it plus what the method keeps of the earlier text; perplexity over
the whole sequence. For the window starting at token s:

- ``full``: the plain model over the whole sequence;
- ``truncation``: the window alone (256 positions at most);
- ``extensible`` (ratio k): [token 0][one extender embedding per k earlier tokens][the window], positions
  1 + (s - 1) // k + 256; ``extensible_untrained`` is the same with the untrained extender (a chunk's mean
  token embedding); ``extensible_recent`` spends half of those context positions on the most recent tokens
  kept raw and the other half on slots for the tokens before them (the oldest are dropped);
- ``sink_recent`` (ratio k): [token 0][the (s - 1) // k tokens just before the window][the window]: the same
  number of positions, uncompressed (StreamingLLM);
- ``recent`` (ratio k, with --with-recent): like sink_recent without the sink token, one more recent token.

``kv_entries`` is the most positions any token attends to (at the end of the last window); ``kv_mb`` those
entries' float32 keys and values over all layers. Training: segments of 1,024 tokens from the training kinds
(essays but the last 9, HotpotQA paragraphs, SciFact and CISI abstracts); the last 256 tokens are predicted from
the first 768 compressed at a ratio drawn from 2, 4, 8, 16 per step, 0 or 128 of them kept raw. Writes
benchmarks/results/longctx_extensible.{json,md}; the extender goes to benchmarks/models/smollm2-extender.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, SHARED_DATA, Output, hotpot_documents, joined_abstracts, refused, save_results

WINDOW = 256
RATIOS = (4, 8)
TRAIN_RATIOS = (2, 4, 8, 16)
TRAIN_RECENTS = (0, 128)  # context tokens kept raw before the predicted ones, drawn per step
DEFAULT_OUTPUT = REPO / "benchmarks" / "models" / "smollm2-extender"


def training_record(output: str | Path) -> Path:
    """The training record's path beside the extender folder (for the default, smollm2-extender-training.json)."""
    return Path(output).with_name(Path(output).name + "-training.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="extender training autocast (default: auto, bfloat16 where the CPU computes it "
                             "natively, else float32: emulated bf16 runs ~5x slower, so a time budget buys fewer steps)")
    parser.add_argument("--segment-tokens", type=int, default=1024)
    parser.add_argument("--per-kind", type=int, default=150, help="training segments per training kind")
    parser.add_argument("--encoder-layers", type=int, default=6)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--eval-sequences", type=int, default=2, help="sequences per text kind (default: 2)")
    parser.add_argument("--held-out-essays", type=int, default=9)
    parser.add_argument("--with-recent", action="store_true", help="also the no-sink recent window")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT),
                        help="where the trained extender is saved; its training record goes beside it as "
                             "<output>-training.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output you named (the default folder is this script's to replace)")
    parser.add_argument("--reuse", action="store_true", help="evaluate the extender saved in --output")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")
    args = parser.parse_args()
    from flagstone.longctx.extensible import EXTENDER_LAYOUT

    if not (args.reuse or args.quick) and refused(
            [Output("--output", args.output, DEFAULT_OUTPUT, EXTENDER_LAYOUT),
             Output("--output", training_record(args.output), training_record(DEFAULT_OUTPUT), file=True)],
            args.overwrite):
        return 2
    from longctx import fold_if_present, peak_rss_mb, rerun_with_mmap_threshold

    rerun_with_mmap_threshold()  # for the peak-memory column
    import torch

    from flagstone.evaluation.niah import load_essays
    from flagstone.longctx.extensible import (
        ExtenderConfig,
        ExtensibleLM,
        load_extender,
        new_extender,
        save_extender,
        train_extender,
    )
    from flagstone.longctx.training import token_segments
    from flagstone.models._hf import resolve_precision
    from flagstone.models.causal_lm import load_causal_lm
    from flagstone.training.loop import TrainingConfig

    wall = time.perf_counter()
    if args.quick:
        args.train_minutes, args.eval_tokens, args.eval_sequences, args.per_kind = 0.2, 512, 1, 4
        args.output = tempfile.mkdtemp(prefix="extender-quick-")
    torch.manual_seed(0)
    lm = load_causal_lm()
    model, tokenizer = lm.model, lm.tokenizer
    essays = load_essays(SHARED_DATA / "longctx" / "paulgraham_essays")
    kinds = {
        "essays_train": essays[: -args.held_out_essays],
        "hotpotqa": hotpot_documents(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"),
        "scifact": joined_abstracts(SHARED_DATA / "beir" / "scifact" / "corpus.jsonl", 8000, limit=1500),
        "cisi": joined_abstracts(SHARED_DATA / "beir" / "cisi" / "corpus.jsonl", 8000),
    }
    eval_texts = {"essays": essays[-args.held_out_essays:],
                  "heldout_kind": joined_abstracts(SHARED_DATA / "beir" / "cranfield" / "corpus.jsonl", 24000)}
    eval_ids = {name: token_segments(texts, tokenizer, args.eval_tokens)[: args.eval_sequences]
                for name, texts in eval_texts.items()}

    # -- training -----------------------------------------------------------------------------------------------
    untrained = ExtensibleLM(model, new_extender(model, ExtenderConfig(encoder_layers=args.encoder_layers,
                                                                       ratios=TRAIN_RATIOS,
                                                                       base_model=lm.name))).extender.eval()
    if args.reuse:
        extender = load_extender(model, args.output)
        training = json.loads(training_record(args.output).read_text())
    else:
        segments, counts = [], {}
        for kind, texts in kinds.items():
            cut = token_segments(texts, tokenizer, args.segment_tokens)
            random.Random(0).shuffle(cut)
            counts[kind] = min(args.per_kind, len(cut))
            segments += cut[: args.per_kind]
        random.Random(1).shuffle(segments)
        torch.manual_seed(0)
        xlm = ExtensibleLM(model, new_extender(model, ExtenderConfig(encoder_layers=args.encoder_layers,
                                                                     ratios=TRAIN_RATIOS, base_model=lm.name)))
        deadline = time.perf_counter() + 60 * args.train_minutes
        losses: list[float] = []

        class Budget(Exception):
            pass

        def stop_at_budget(step: int, loss: float) -> None:
            losses.append(loss)
            if step % 10 == 0:
                print(f"step {step} loss {sum(losses[-10:]) / len(losses[-10:]):.3f}", flush=True)
            if time.perf_counter() > deadline:
                raise Budget

        precision = resolve_precision(args.precision)
        config = TrainingConfig(epochs=1, learning_rate=args.learning_rate, warmup_ratio=0.05, seed=0,
                                precision=precision, show_progress=False)
        start = time.perf_counter()
        try:
            train_extender(xlm, segments, config, raw=WINDOW, recents=TRAIN_RECENTS, on_step=stop_at_budget)
        except Budget:
            pass  # the time budget is spent: evaluate what was learnt so far
        extender = xlm.extender.eval()
        save_extender(extender, args.output, overwrite=True)
        training = {"steps": len(losses), "seconds": round(time.perf_counter() - start, 1),
                    "segments": counts, "segment_tokens": args.segment_tokens, "raw_tokens": WINDOW,
                    "ratios": list(TRAIN_RATIOS), "recents": list(TRAIN_RECENTS), "learning_rate": args.learning_rate, "precision": precision,
                    "encoder_layers": args.encoder_layers,
                    "trainable_parameters": sum(p.numel() for p in extender.parameters()),
                    "loss_first10": sum(losses[:10]) / max(1, len(losses[:10])),
                    "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:]))}
        if not args.quick:
            training_record(args.output).write_text(json.dumps(training, indent=2))
        print(json.dumps(training), flush=True)

    # -- evaluation ---------------------------------------------------------------------------------------------
    config = model.config
    entry_bytes = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 4
    trained_x, untrained_x = ExtensibleLM(model, extender), ExtensibleLM(model, untrained)

    def windows(n: int):
        return [(s, min(n, s + WINDOW)) for s in range(0, n, WINDOW)]

    def run_method(method: str, k: int | None, ids: list[int], read_only: bool = False) -> tuple[torch.Tensor, int]:
        """(logits for every token, most positions attended) of one method over one sequence; ``read_only``:
        only each forward's last logits (what the peak-memory column measures, as longctx.py does)."""
        # every row here is a fresh forward per window (nothing carried between windows), so none keeps a KV
        # cache; the extender path already reads with use_cache=False
        keep = {"logits_to_keep": 1, "use_cache": False} if read_only else {}
        if method == "full":
            return model(torch.tensor([ids]), **keep).logits[0], len(ids)
        pieces, most = [], 0
        for s, e in windows(len(ids)):
            raw = ids[s:e]
            if method == "truncation":
                inputs, offset = raw, 0
            elif method in ("sink_recent", "recent"):
                m = trained_x.layout(s, len(raw), k).slots if s else 0
                kept = (ids[:1] + ids[s - m:s] if method == "sink_recent" else ids[s - m - 1:s]) if s else []
                inputs, offset = kept + raw, len(kept)
            else:
                xlm = untrained_x if method == "extensible_untrained" else trained_x
                budget = trained_x.layout(s, len(raw), k).slots  # what pure compression uses: the equal budget
                recent = budget // 2 if method == "extensible_recent" else 0
                logits = xlm.logits(ids[:s], raw, k, recent=recent, max_slots=budget - recent,
                                    last_only=read_only)[0]
                plan = xlm.layout(s, len(raw), k, recent=recent, max_slots=budget - recent)
                pieces.append(logits)
                most = max(most, plan.positions)
                continue
            pieces.append(model(torch.tensor([inputs]), **keep).logits[0, 0 if read_only else offset:])
            most = max(most, len(inputs))
        return torch.cat(pieces), most

    def write(partial: bool) -> None:
        results = {"model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised to float32), frozen",
                   "window": WINDOW, "rows": rows, "training": training,
                   "eval": {"tokens_per_sequence": args.eval_tokens, "sequences_per_kind": args.eval_sequences,
                            "essays": f"the last {args.held_out_essays} essays by name",
                            "heldout_kind": "Cranfield abstracts (joined to >= 24,000 characters), never trained on",
                            "slice_note": ("a slice: the full run is --eval-sequences 8" if args.eval_sequences < 8
                                           else "full")},
                   "peak_mb_note": ("peak_mb: peak RSS above the level before reading one essay sequence with "
                                    "only each forward's last logits kept and no KV cache (every method here "
                                    "re-reads its positions from scratch for each window; longctx.peak_rss_mb). "
                                    "Not comparable with longctx.py's peak column, whose methods keep a cache"),
                   "kv_note": "kv_entries = the most positions any token attends to; kv_mb = entries x layers x 2 x "
                              "kv heads x head dim x 4 bytes",
                   "wall_s": round(time.perf_counter() - wall, 1), "quick": args.quick,
                   "partial": partial}
        lines = [f"Equal LM input positions, windows of {WINDOW}, {args.eval_sequences} sequence(s) of "
                 f"{args.eval_tokens} tokens per kind (held-out essays; Cranfield abstracts, a kind never trained on).", "",
                 "| method | ratio | ppl essays | ppl held-out kind | positions | KV MB | peak MB | ms / token |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['ratio'] or '-'} | {r['ppl_essays']:.2f} | {r['ppl_heldout_kind']:.2f} | "
                         f"{r['kv_entries']} | {r['kv_mb']:.1f} | {r['peak_mb']:.1f} | {r['ms_per_token']:.1f} |")
        lines += ["", f"Extender: {training['steps']} steps in {training['seconds']:.0f} s, "
                      f"{training.get('trainable_parameters', 0):,} trainable parameters, loss "
                      f"{training['loss_first10']:.3f} -> {training['loss_last10']:.3f} (first / last 10 steps)."]
        if partial:
            lines += ["", f"PARTIAL: {len(rows)} of {len(methods)} methods evaluated so far."]
        if args.quick:
            print("\n".join(lines))
            return
        save_results("longctx_extensible", "\n".join(lines), longctx_extensible=results)
        if not partial:
            fold_if_present()  # the extender's rows join longctx.json's table

    methods = [("full", None), ("truncation", None)]
    for k in RATIOS:
        methods += [("sink_recent", k)] + ([("recent", k)] if args.with_recent else [])
        methods += ([("extensible_untrained", k)] if k == RATIOS[0] else []) + [("extensible", k),
                                                                                 ("extensible_recent", k)]
    rows = []
    for method, k in methods:
        row = {"method": method, "ratio": k, "peak_mb": None}
        seconds, tokens = 0.0, 0
        for name, sequences in eval_ids.items():
            nll, count, most = 0.0, 0, 0
            for ids in sequences:
                start = time.perf_counter()
                with torch.no_grad():
                    logits, positions = run_method(method, k, ids)
                seconds += time.perf_counter() - start
                tokens += len(ids)
                target = torch.tensor(ids[1:])
                nll += float(torch.nn.functional.cross_entropy(logits[:-1].float(), target, reduction="sum"))
                count += len(ids) - 1
                most = max(most, positions)
            row[f"ppl_{name}"] = math.exp(nll / count)
            row["kv_entries"] = most
        row["kv_mb"] = row["kv_entries"] * entry_bytes / 1e6
        with torch.no_grad():
            row["peak_mb"] = peak_rss_mb(lambda: run_method(method, k, eval_ids["essays"][0], read_only=True))
        row["ms_per_token"] = 1000 * seconds / tokens
        rows.append(row)
        print(f"{method:22s} k={k} ppl essays {row['ppl_essays']:.2f} held-out kind {row['ppl_heldout_kind']:.2f} "
              f"positions {row['kv_entries']} ({row['kv_mb']:.1f} MB) {row['ms_per_token']:.1f} ms/token", flush=True)
        write(partial=len(rows) < len(methods))

    return 0


if __name__ == "__main__":
    sys.exit(main())
