"""How fast does Flagstone encode documents, against sentence-transformers and FlagEmbedding?

The first N SciFact documents (title + text, max length 256), the bundled all-MiniLM-L6-v2, batch size 32,
the same torch thread count for everyone, in one process. The documents are cut into rounds and the
encoders take turns round by round (the machine is noisy; interleaving spreads the noise evenly).

    python benchmarks/encode.py [--docs 2000] [--threads 2] [--rounds 4] [--scifact all|lossy|none]

Also times Flagstone on every inference backend x precision (torch float32 / bfloat16 autocast, onnx float32 /
int8, openvino float32 / bfloat16; the exports are made once, before timing, and cached) in the same
interleaved rounds, with each one's max |diff| to torch float32 on these documents and its SciFact nDCG@10
(dense, the full test split: the 5,183 documents are encoded once per backend, minutes each, and kept in the
embedding cache, so a rerun reads them), plus Flagstone with bfloat16 weights (dtype="bfloat16") and how close
each run is to the machine's limit: model FLOPs per token x tokens/s against measured fp32 sgemm.
Writes benchmarks/results/encode.json (its list ``backends`` has one object per backend x precision) and
encode.md.
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
BACKEND_ROWS = (("torch", "float32"), ("torch", "bfloat16"), ("onnx", "float32"), ("onnx", "int8"),
                ("openvino", "float32"), ("openvino", "bfloat16"))
# sentence-transformers' own onnx / openvino backends need optimum; neither installs here without replacing what
# Flagstone runs on (checked with pip install --dry-run), so the peers run on torch only
PEER_BACKENDS_SKIPPED = ("optimum[onnxruntime] 2.1 would downgrade transformers 5.24 to 4.57; optimum-intel[openvino] "
                         "2.2 would replace torch 2.13.0 with 2.14.1 (and add CUDA wheels)")


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


def scifact_ndcg(embedder) -> float:
    """Dense nDCG@10 on SciFact's test split (documents from the embedding cache where they are there)."""
    from flagstone.evaluation import DEFAULT_EVAL_DEPTH
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.metrics import evaluate_run
    from flagstone.models.cache import EmbeddingCache
    from flagstone.retrieval.retriever import Retriever

    test = load_beir(SHARED_DATA / "beir" / "scifact", "test")
    retriever = Retriever(embedder, signals=["dense"], cache=EmbeddingCache())
    retriever.fit(test.doc_ids, test.doc_texts)
    qids = list(test.qrels)
    hits = retriever.search([test.queries[q] for q in qids], mode="dense", k=DEFAULT_EVAL_DEPTH)
    return float(evaluate_run(hits.to_run(qids), test.qrels, (10,)).mean["ndcg@10"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--skip-bf16", action="store_true", help="no row for bfloat16 weights (dtype=bfloat16)")
    parser.add_argument("--scifact", choices=("all", "lossy", "none"), default="all",
                        help="SciFact nDCG@10 for every backend, only for those that are not float32 (the float32 "
                             "ones' vectors equal torch's to ~1e-7; torch float32 is always measured), or none "
                             "(encoding the corpus takes minutes per backend)")
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
    backends = {("torch", "float32"): ours}
    export_seconds = {}
    for backend, precision in BACKEND_ROWS[1:]:
        start = time.perf_counter()  # an export (once per model, then cached) happens here, not in the timing
        backends[backend, precision] = Embedder(batch_size=BATCH, max_length=MAX_LENGTH, backend=backend,
                                                precision=precision, show_progress=False)
        compiled = backends[backend, precision].compiled
        export_seconds[f"{backend}_{precision}"] = {"load_s": time.perf_counter() - start,
                                                    "exported_now": bool(compiled and compiled.exported_now)}
        encoders[f"{backend}_{precision}"] = lambda texts, e=backends[backend, precision]: e.encode(texts).dense

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
    out["peer_backends_skipped"] = PEER_BACKENDS_SKIPPED
    out["backend_loads"] = export_seconds
    out["backends"] = []
    for (backend, precision), embedder in backends.items():
        name = "flagstone" if (backend, precision) == ("torch", "float32") else f"{backend}_{precision}"
        start = time.perf_counter()
        measure = args.scifact == "all" or (args.scifact == "lossy" and
                                            (precision != "float32" or backend == "torch"))
        ndcg = scifact_ndcg(embedder) if measure else None
        print(f"{backend} {precision}: SciFact nDCG@10 {ndcg} ({time.perf_counter() - start:.0f}s)", flush=True)
        out["backends"].append({
            "backend": backend, "precision": precision, "docs_per_s": docs_per_s[name],
            "ratio_vs_best_peer": docs_per_s[name] / peers,
            "max_abs_diff": float(np.abs(full[name] - full["flagstone"]).max()),
            "min_cosine_to_torch_float32": float(np.sum(full[name] * full["flagstone"], axis=1).min()),
            "scifact_ndcg@10": ndcg,
        })
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
    rows += ["", "| backend | precision | docs/s | vs faster peer | max abs diff to torch f32 | SciFact nDCG@10 |",
             "|---|---|---|---|---|---|"]
    for row in out["backends"]:
        ndcg = "-" if row["scifact_ndcg@10"] is None else f"{row['scifact_ndcg@10']:.4f}"
        rows.append(f"| {row['backend']} | {row['precision']} | {row['docs_per_s']:.1f} | "
                    f"{row['ratio_vs_best_peer']:.2f}x | {row['max_abs_diff']:.1e} | {ndcg} |")
    rows += ["", f"Peers on torch only: {PEER_BACKENDS_SKIPPED}."]
    save_results("encode", "\n".join(rows), encode=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
