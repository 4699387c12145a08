"""Context extension by LoRA (the Llama-3-8B-Instruct-80K recipe) on SmolLM2-135M, sized for two CPU cores.

    python benchmarks/longctx_lora.py [--trained-length 512] [--time-budget 15] [--quick]

SmolLM2-135M-Instruct already reads 8,192 tokens, and 16K-32K-token sequences are out of reach on two cores.
So the experiment runs on a short-context stand-in: the same weights with the RoPE base lowered by the inverse
of NTK-aware scaling, theta / (8192 / L) ** (d / (d - 2)), so that at L tokens the slowest RoPE dimension turns
as far as it did at 8,192 (``squeezed_rope_theta``). Its trained length is called L (default 512); perplexity
and needle accuracy are measured at 1x, 2x and 4x L for

- ``before``: the stand-in as it is;
- ``rope_only``: its RoPE base raised the recipe's way (theta x 4 ** 2.6), no training;
- ``after``: that plus LoRA adapters trained by ``flagstone train long-context`` (loaded back through
  ``load_causal_lm`` from the adapter folder);
- ``native``: the unmodified model (base 100K), perplexity only, for reference. Note the raised base of the
  stand-in is closer to the native one: part of what ``rope_only`` recovers is the model's own training.

Perplexity: held-out essays (the last 9 in name order, never trained on), sequences of each length, the whole
sequence scored. Needle: a random passkey (its own seed, never one used in training) at depths 0.1, 0.2, ...,
0.9 of a haystack of held-out essays, one chat turn, greedy decoding continuing the answer's lead. Writes
benchmarks/results/longctx_lora.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, SHARED_DATA, save_results
from longctx import fold_if_present, lora_table

NATIVE_LENGTH = 8192
STANDIN_MARKER = ".made-by-longctx_lora"  # a stand-in folder this script made and may rewrite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained-length", type=int, default=512, help="L of the short stand-in (default: 512)")
    parser.add_argument("--time-budget", type=float, default=15.0, help="training minutes (default: 15)")
    parser.add_argument("--samples", type=int, default=60, help="synthetic training samples (default: 60)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="tokens scored per length (default: 8192)")
    parser.add_argument("--depths", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                        help="needle depths, one needle each per length (default: 0.1 to 0.9 in steps of 0.1)")
    parser.add_argument("--models", default=str(REPO / "benchmarks" / "models"),
                        help="where the stand-in and the adapter are written")
    parser.add_argument("--reuse-adapter", action="store_true", help="evaluate the adapter already trained")
    parser.add_argument("--overwrite", action="store_true",
                        help="retrain adapters whose folders under --models exist (default: an existing folder is an "
                             "error unless --reuse-adapter)")
    parser.add_argument("--short-control", action="store_true",
                        help="also train the same LoRA (raised base, as many samples) on samples with L-token "
                             "haystacks and score it as after_short: what LoRA gains without long samples is "
                             "adaptation to the kind of text, not longer reach")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")
    args = parser.parse_args()

    import torch

    from flagstone.evaluation.niah import build_haystack, load_essays
    from flagstone.longctx.extension import (
        apply_rope,
        random_needle,
        recipe_rope_theta,
        rope_theta_of,
        squeezed_rope_theta,
    )
    from flagstone.longctx.training import token_segments
    from flagstone.models.causal_lm import load_causal_lm

    wall = time.perf_counter()
    torch.manual_seed(0)
    L = args.trained_length
    lengths = [L, 2 * L, 4 * L]
    if args.quick:
        args.time_budget, args.samples, args.ppl_tokens, args.depths = 0.2, 2, 2 * L, "0.5"
        args.models = tempfile.mkdtemp(prefix="lora-quick-")
    native = load_causal_lm()
    theta = rope_theta_of(native.model.config)
    head_dim = native.model.config.head_dim
    short_theta = squeezed_rope_theta(theta, NATIVE_LENGTH, L, head_dim)
    raised_theta = recipe_rope_theta(short_theta, 4)
    standin = Path(args.models) / f"smollm2-135m-rope{round(short_theta)}"
    adapter = Path(args.models) / f"smollm2-135m-rope{round(short_theta)}-lora-x4"
    short_adapter = adapter.with_name(adapter.name + "-short-samples")
    # checked before make_standin writes anything: a folder it did not make must stay as it is
    problem = output_problem(standin, [adapter] + ([short_adapter] if args.short_control else []),
                             reuse=args.reuse_adapter, overwrite=args.overwrite)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    make_standin(native.path, standin, short_theta, L)

    essays = load_essays(SHARED_DATA / "longctx" / "paulgraham_essays")
    held = essays[-9:]
    tokenizer = native.tokenizer

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    segments = {n: token_segments(held, tokenizer, n)[: max(1, args.ppl_tokens // n)] for n in lengths}

    def perplexity(model, n: int) -> float:
        nll, tokens = 0.0, 0
        for ids in segments[n]:
            t = torch.tensor([ids])
            with torch.no_grad():
                logits = model(t).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, t[0, 1:], reduction="sum"))
            tokens += len(ids) - 1
        return math.exp(nll / tokens)

    def needle_prompt(n: int, depth: float, seed: int):
        needle = random_needle(random.Random(10_000 + seed))
        marker = "\u0000HAYSTACK\u0000"
        turn = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{marker}\n\n{needle.question} Answer with the passphrase only."}],
            tokenize=False, add_generation_prompt=True) + needle.lead
        overhead = count(turn.replace(marker, ""))
        haystack = build_haystack(held, n - overhead - 2, depth, count, needle)
        return tokenizer(turn.replace(marker, haystack), add_special_tokens=False)["input_ids"], needle

    depths = [float(d) for d in args.depths.split(",")]

    def evaluate(name: str, model, needles: bool = True) -> dict:
        out = {}
        for n in lengths:
            start = time.perf_counter()
            row = {"ppl": perplexity(model, n), "ppl_sequences": len(segments[n])}
            if needles:
                hits, answers = 0, []
                for i, depth in enumerate(depths):
                    ids, needle = needle_prompt(n, depth, seed=n * 10 + i)
                    with torch.no_grad():
                        gen = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                             pad_token_id=tokenizer.eos_token_id)
                    answer = tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True)
                    hits += needle.is_found(answer)
                    answers.append({"depth": depth, "prompt_tokens": len(ids), "key": needle.key,
                                    "answer": answer[:60], "correct": needle.is_found(answer)})
                row.update(needle_correct=hits, needle_total=len(depths), needles=answers)
            out[str(n)] = row
            print(f"{name:10s} {n:5d} tokens: ppl {row['ppl']:.2f}"
                  + (f" needle {row['needle_correct']}/{row['needle_total']}" if needles else "")
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
        return out

    # training first: a failure shows at once, not after the evaluations
    def train_adapter(folder: Path, sample_lengths: list[int] | None) -> None:
        if args.reuse_adapter and folder.is_dir():
            return
        command = [sys.executable, "-m", "flagstone", "train", "long-context", "--model", str(standin),
                   "--data", str(SHARED_DATA), "-o", str(folder), "--overwrite", "--trained-length", str(L),
                   "--target-length", str(4 * L), "--samples", str(args.samples), "--lora-rank", str(args.lora_rank),
                   "--learning-rate", str(args.learning_rate), "--time-budget", str(args.time_budget), "--quiet"]
        if sample_lengths:
            command += ["--sample-lengths", *map(str, sample_lengths)]
        print(" ".join(command), flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(command, check=True, env=env)

    train_adapter(adapter, None)
    training = json.loads((adapter / "long_context.json").read_text())
    if args.short_control:
        train_adapter(short_adapter, [L])
        training_short = json.loads((short_adapter / "long_context.json").read_text())

    def write(partial: bool) -> None:
        summary = {"model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised to float32)",
                   "setup": {"native_length": NATIVE_LENGTH, "native_rope_theta": theta, "trained_length": L,
                             "standin_rope_theta": short_theta, "raised_rope_theta": raised_theta,
                             "lengths": lengths, "needle_depths": depths,
                             "ppl_text": "held-out essays (last 9 by name), whole sequences scored",
                             "quick": args.quick},
                   "lora_extension": {"before": results.get("before"), "after": results.get("after"),
                                      "rope_only": results.get("rope_only"), "native_reference": results.get("native"),
                                      **({"after_short": results.get("after_short")} if args.short_control else {})},
                   "partial": partial,
                   "training": training, "wall_s": round(time.perf_counter() - wall, 1),
                   **({"training_short": training_short} if args.short_control else {})}
        lines = [f"Stand-in trained length L = {L} (RoPE base {short_theta:,.0f}; native model 8,192 at "
                 f"{theta:,.0f}); raised base {raised_theta:,.0f}.", "", *lora_table(summary["lora_extension"])]
        lines += ["", f"Training: {training['steps']} LoRA steps (rank {training['settings']['lora_rank']}) in "
                      f"{training['seconds']:.0f} s on {training['samples']} synthetic samples {training['kinds']} of "
                      f"{training['sample_lengths']} tokens; loss {training['loss_first'][:1]} -> {training['loss_last'][-1:]}."]
        if args.short_control:
            lines.append(f"after_short: the same LoRA trained on {training_short['sample_lengths']}-token samples only "
                         f"({training_short['steps']} steps in {training_short['seconds']:.0f} s).")
        if partial:
            lines += ["", "PARTIAL: " + ", ".join(results) + " evaluated so far."]
        if args.quick:
            print("\n".join(lines))
            return
        save_results("longctx_lora", "\n".join(lines), longctx_lora=summary)
        if not partial:
            fold_if_present()  # longctx.json carries the before/after table as lora_extension

    results: dict = {}
    results["native"] = evaluate("native", native.model, needles=False)
    write(partial=True)
    del native
    before = load_causal_lm(standin)
    results["before"] = evaluate("before", before.model)
    write(partial=True)
    raised = apply_rope(before, raised_theta, 4 * L)
    results["rope_only"] = evaluate("rope_only", raised.model)
    write(partial=True)
    del raised, before
    after = load_causal_lm(adapter)
    results["after"] = evaluate("after", after.model)
    if args.short_control:
        del after
        write(partial=True)
        results["after_short"] = evaluate("after_short", load_causal_lm(short_adapter).model)
    write(partial=False)
    return 0


def output_problem(standin: Path, adapters: list[Path], *, reuse: bool, overwrite: bool) -> str | None:
    """The one-line error for output folders this run must not touch: a stand-in folder this script did not make
    (no marker file), or an adapter folder that exists when it is neither reused nor to be overwritten."""
    if standin.exists() and not (standin / STANDIN_MARKER).is_file() and not overwrite:
        return f"{standin} exists and was not made by longctx_lora.py: pass another --models, or --overwrite"
    for folder in adapters:
        if folder.exists() and not reuse and not overwrite:
            return (f"{folder} exists: pass --reuse-adapter to evaluate it, --overwrite to retrain it, "
                    "or another --models")
    return None


def make_standin(native: Path, folder: Path, theta: float, trained_length: int) -> None:
    """The native folder's files linked, with a config whose RoPE base is ``theta``, and the marker that says
    this script made the folder (so a later run may rewrite its config)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STANDIN_MARKER).write_text("made by benchmarks/longctx_lora.py\n")
    for entry in native.iterdir():
        if entry.name in ("config.json",) or entry.name.startswith("."):
            continue
        link = folder / entry.name
        if not link.exists():
            link.symlink_to(entry.resolve())
    config = json.loads((native / "config.json").read_text())
    config["rope_parameters"] = {**config["rope_parameters"], "rope_theta": theta}
    config["max_position_embeddings"] = trained_length
    (folder / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    sys.exit(main())
