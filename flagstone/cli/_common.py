"""Helpers shared by the CLI's command groups: texts, embedder/cache/retriever from args, option groups."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from flagstone.errors import DataError, FlagstoneError

EPILOG = "Models: a local folder, a hub name (BAAI/bge-m3) or a preset (see `flagstone models`)."


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="embedding model (default: the bundled all-MiniLM-L6-v2)")
    g.add_argument("--max-length", type=int, default=None, help="max tokens per text (default: the model's)")
    g.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="compute type; bfloat16 is about 2x faster on CPUs with AVX-512 BF16, vectors differ "
                        "slightly (default: float32)")
    g.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: $FLAGSTONE_CACHE or ~/.cache/flagstone)")
    g.add_argument("--no-cache", action="store_true", help="always re-encode documents")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_hybrid_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hybrid")
    g.add_argument("--weights", default=None, metavar="SIGNAL=W,...",
                   help="hybrid weights, e.g. dense=0.3,bm25=0.7 (default: depends on the model's heads)")
    g.add_argument("--fusion", choices=("weighted", "rrf"), default="weighted",
                   help="weighted sum of normalised scores, or reciprocal-rank fusion (default: weighted)")
    g.add_argument("--normalize", choices=("minmax", "zscore", "none"), default="minmax",
                   help="score normalisation before a weighted sum (default: minmax)")


def _embedder(args: argparse.Namespace):
    from flagstone.models.embedder import Embedder
    from flagstone.models.presets import DEFAULT_MODEL

    return Embedder(args.model or DEFAULT_MODEL, max_length=args.max_length, batch_size=args.batch_size,
                    dtype=args.dtype, show_progress=not args.quiet)


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    """The cache options alone, for commands without the full model group."""
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache folder (default: $FLAGSTONE_CACHE or ~/.cache/flagstone)")
    p.add_argument("--no-cache", action="store_true", help="always re-encode documents")


def _check_output_file(path: str, *, overwrite: bool, example: str) -> None:
    """Before any work: the output file must not be a folder, nor exist unless ``--overwrite`` was given."""
    from flagstone.errors import DataError

    out = Path(path)
    if out.is_dir():
        raise DataError(f"output {path} is a folder; give a file name such as {example}")
    if out.exists() and not overwrite:
        raise DataError(f"output {path} already exists; pass --overwrite to replace it")


def _cache(args: argparse.Namespace):
    if args.no_cache:
        return None
    from flagstone.models.cache import EmbeddingCache

    return EmbeddingCache(Path(args.cache_dir) / "embeddings" if args.cache_dir else None)


def _hybrid(args: argparse.Namespace):
    from flagstone.retrieval.retriever import HybridConfig

    weights = None
    if args.weights:
        weights = {}
        for part in args.weights.split(","):
            name, sep, value = part.partition("=")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise FlagstoneError(f"bad --weights entry {part!r}: expected SIGNAL=NUMBER") from None
            if not sep:
                raise FlagstoneError(f"bad --weights entry {part!r}: expected SIGNAL=NUMBER")
    return HybridConfig(weights=weights, method=args.fusion, normalize=args.normalize)


def _retriever(args: argparse.Namespace, modes: Sequence[str] | None = None, dense_index: str = "flat"):
    from flagstone.retrieval.retriever import Retriever

    needs_model = modes is None or any(m != "bm25" for m in modes)
    embedder = _embedder(args) if needs_model else None
    signals = None
    if modes is not None:
        signals = sorted({m for m in modes if m != "hybrid"}, key=("dense", "sparse", "colbert", "bm25").index)
        if "hybrid" in modes and len(signals) < 2:
            signals = None  # hybrid alone: use every signal the model has, plus BM25
    return Retriever(embedder, signals=signals, cache=_cache(args), hybrid=_hybrid(args) if "weights" in args else None,
                     dense_index=dense_index)


def _read_texts(path: str) -> tuple[list[str], list[str]]:
    """(ids, texts) from a BEIR folder, a JSONL file or a plain text file."""
    from flagstone._io import iter_jsonl, read_text, require_file
    from flagstone.evaluation.beir import load_corpus

    p = Path(path)
    if p.is_dir():
        return load_corpus(p / "corpus.jsonl")
    require_file(p, "input file")
    if p.suffix == ".jsonl":
        ids, texts = [], []
        for line_no, row in iter_jsonl(p):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{p}:{line_no}: needs a non-empty string field 'text'")
            title = row.get("title") or ""
            ids.append(str(row.get("_id", row.get("id", line_no))))
            texts.append(f"{title} {text}".strip())
        if len(set(ids)) != len(ids):
            raise DataError(f"{p}: document ids are not unique")
    else:
        lines = read_text(p, "input file").splitlines()
        ids = [str(i) for i, line in enumerate(lines, 1) if line.strip()]
        texts = [line for line in lines if line.strip()]
    if not texts:
        raise DataError(f"{p}: no texts found (the file is empty)")
    return ids, texts


def _snippet(text: str, width: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
