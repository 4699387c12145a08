"""Where does encoding time go? A torch.profiler view of the bundled model's forward pass.

Encodes SciFact documents (max length 256, batch 32) through Flagstone's Embedder under the profiler and
prints each operator's share of time; for the matrix multiplies (aten::addmm) it also derives the FLOP
rate from the model's shapes, to compare with the machine's fp32 sgemm rate.

    python benchmarks/encode_profile.py [--docs 128]

Writes benchmarks/results/encode_profile.json and .md.
"""
from __future__ import annotations

import argparse
import os
import sys

from _common import save_results
from encode import flops_per_token, load_docs, sgemm_gflops

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch

    from flagstone.models.embedder import Embedder

    gemm = sgemm_gflops(args.threads)
    docs = load_docs(args.docs)
    embedder = Embedder(max_length=256, batch_size=32, show_progress=False)
    embedder.encode(docs[:32])  # warm-up
    with torch.profiler.profile() as prof:
        embedder.encode(docs)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    lengths = [len(i) for i in embedder.tokenizer(docs, truncation=True, max_length=256)["input_ids"]]
    config = embedder.model.config
    linear_flop = 2 * config.num_hidden_layers * (4 * config.hidden_size ** 2
                                                  + 2 * config.hidden_size * config.intermediate_size)
    addmm = next((e for e in events if e.key == "aten::addmm"), None)
    addmm_gflops = linear_flop * sum(lengths) / (addmm.self_cpu_time_total / 1e6) / 1e9 if addmm else 0.0
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    shares = {e.key: e.self_cpu_time_total / total for e in top}
    out = {"docs": len(docs), "tokens": int(sum(lengths)), "threads": args.threads, "sgemm_gflops": gemm,
           "addmm_gflops": addmm_gflops, "model_gflop_per_token": flops_per_token(config, 256) / 1e9,
           "share_of_time": shares}
    rows = ["| operator | share of time |", "|---|---|"] + [f"| {k} | {v:.1%} |" for k, v in shares.items()]
    rows += ["", f"addmm runs at {addmm_gflops:.0f} GFLOP/s (linear layers only, real tokens) against a measured "
                 f"fp32 sgemm of {gemm:.0f} GFLOP/s; {len(docs)} docs, {args.threads} threads."]
    save_results("encode_profile", "\n".join(rows), encode_profile=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
