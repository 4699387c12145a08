"""How fast does Flagstone encode documents, against sentence-transformers and FlagEmbedding?

The first N SciFact documents (title + text, max length 256), the bundled all-MiniLM-L6-v2, batch size 32,
the same torch thread count for everyone, in one process. The documents are cut into rounds and the
encoders take turns round by round (the machine is noisy; interleaving spreads the noise evenly).

    python benchmarks/encode.py [--docs 2000] [--threads 2] [--rounds 4]

Also reports Flagstone with bfloat16 weights (an opt-in fast mode; its vectors are not identical) and how
close each run is to the machine's limit: model FLOPs per token x tokens/s against measured fp32 sgemm.
Writes benchmarks/results/encode.json and encode.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from _common import SHARED_DATA, save_results

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MAX_LENGTH = 256
BATCH = 32


def load_docs(n: int) -> list[str]:
    from flagstone.evaluation.beir import load_corpus

    _, texts = load_corpus(SHARED_DATA / "beir" / "scifact" / "corpus.jsonl")
    return texts[:n]


def sgemm_gflops(threads: int) -> float:
    """fp32 matrix-multiply rate at a shape like the model's FFN (8192 x 384 x 1536)."""
    import torch


    torch.set_num_threads(threads)
    a, b = torch.randn(8192, 384), torch.randn(384, 1536)
    a @ b
    best, reps = 0.0, 10
    for _ in range(5):  # the best of five trials: the rate the machine can reach, not a noisy moment
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * 8192 * 384 * 1536 * reps / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_token(config, mean_len: float) -> float:
    """Forward FLOPs per token: the linear layers plus attention at the mean sequence length."""
    h, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2 * layers * (4 * h * h + 2 * h * ff + 2 * mean_len * h)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-bf16", action="store_true")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from flagstone.models.embedder import Embedder
    from tests.helpers import load_flagembedding

    gemm = sgemm_gflops(args.threads)  # measured first, on an idle process
    docs = load_docs(args.docs)
    ours = Embedder(batch_size=BATCH, max_length=MAX_LENGTH, show_progress=False)
    path = str(ours.path)
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = MAX_LENGTH
    fe_class = load_flagembedding("inference.embedder.encoder_only.base", "BaseEmbedder")
    fe = fe_class(path, pooling_method="mean", normalize_embeddings=True, use_fp16=False, devices="cpu",
                  batch_size=BATCH, passage_max_length=MAX_LENGTH)
    encoders = {
        "flagstone": lambda texts: ours.encode(texts).dense,
        "sentence_transformers": lambda texts: st.encode(texts, batch_size=BATCH, normalize_embeddings=True,
                                                         convert_to_numpy=True),
        "flagembedding": lambda texts: np.asarray(fe.encode_corpus(texts, batch_size=BATCH,
                                                                   max_length=MAX_LENGTH)),
    }
    if not args.skip_bf16:
        fast = Embedder(batch_size=BATCH, max_length=MAX_LENGTH, dtype="bfloat16", show_progress=False)
        encoders["flagstone_bf16"] = lambda texts: fast.encode(texts).dense

    lengths = [len(ids) for ids in ours.tokenizer(docs, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    n_tokens = int(sum(lengths))
    for fn in encoders.values():  # warm-up: first-call allocations and lazy initialisation
        fn(docs[:BATCH])

    seconds = {name: 0.0 for name in encoders}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    bounds = np.linspace(0, len(docs), args.rounds + 1).astype(int)
    for r in range(args.rounds):
        chunk = docs[bounds[r] : bounds[r + 1]]
        names = list(encoders)
        names = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in names:
            start = time.perf_counter()
            vectors[name].append(encoders[name](chunk))
            seconds[name] += time.perf_counter() - start
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {seconds[n]:.0f}s" for n in encoders), flush=True)

    full = {name: np.concatenate(v) for name, v in vectors.items()}
    docs_per_s = {name: len(docs) / s for name, s in seconds.items()}
    per_token = flops_per_token(ours.model.config, float(np.mean(lengths)))
    peers = max(docs_per_s["sentence_transformers"], docs_per_s["flagembedding"])
    out = {
        "docs": len(docs),
        "tokens": n_tokens,
        "threads": args.threads,
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "flagstone_docs_per_s": docs_per_s["flagstone"],
        "sentence_transformers_docs_per_s": docs_per_s["sentence_transformers"],
        "flagembedding_docs_per_s": docs_per_s["flagembedding"],
        "ratio_vs_faster_peer": docs_per_s["flagstone"] / peers,
        "ratio_vs_sentence_transformers": docs_per_s["flagstone"] / docs_per_s["sentence_transformers"],
        "ratio_vs_flagembedding": docs_per_s["flagstone"] / docs_per_s["flagembedding"],
        "max_abs_diff": float(max(np.abs(full["flagstone"] - full["sentence_transformers"]).max(),
                                  np.abs(full["flagstone"] - full["flagembedding"]).max())),
        "max_abs_diff_vs_sentence_transformers": float(np.abs(full["flagstone"] - full["sentence_transformers"]).max()),
        "max_abs_diff_vs_flagembedding": float(np.abs(full["flagstone"] - full["flagembedding"]).max()),
        "model_gflop_per_token": per_token / 1e9,
        "sgemm_gflops": gemm,
        "achieved_gflops": {n: per_token * n_tokens / s / 1e9 for n, s in seconds.items()},
        "cpu": platform.processor() or platform.machine(),
    }
    if "flagstone_bf16" in full:
        out["flagstone_bf16_docs_per_s"] = docs_per_s["flagstone_bf16"]
        out["flagstone_bf16_ratio_vs_faster_peer"] = docs_per_s["flagstone_bf16"] / peers
        out["flagstone_bf16_max_abs_diff"] = float(np.abs(full["flagstone_bf16"] - full["flagstone"]).max())
        cos = np.sum(full["flagstone_bf16"] * full["flagstone"], axis=1)
        out["flagstone_bf16_min_cosine_to_fp32"] = float(cos.min())

    rows = ["| encoder | docs/s | tokens/s | vs faster peer | achieved GFLOP/s | % of sgemm |", "|---|---|---|---|---|---|"]
    for name, s in seconds.items():
        achieved = out["achieved_gflops"][name]
        rows.append(f"| {name} | {len(docs) / s:.1f} | {n_tokens / s:.0f} | {len(docs) / s / peers:.2f}x | "
                    f"{achieved:.0f} | {100 * achieved / gemm:.0f}% |")
    rows.append("")
    rows.append(f"{len(docs)} SciFact docs, {n_tokens} tokens, max length {MAX_LENGTH}, batch {BATCH}, "
                f"{args.threads} threads; fp32 sgemm here: {gemm:.0f} GFLOP/s; model: "
                f"{per_token / 1e6:.1f} MFLOP/token. Max |flagstone - peer| = {out['max_abs_diff']:.1e}"
                + (f"; bf16 max |diff| vs fp32 = {out['flagstone_bf16_max_abs_diff']:.1e}, min cosine "
                   f"{out['flagstone_bf16_min_cosine_to_fp32']:.5f}" if "flagstone_bf16" in full else ""))
    save_results("encode", "\n".join(rows), encode=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
