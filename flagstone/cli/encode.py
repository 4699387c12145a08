"""The ``flagstone encode`` command: encode texts to an .npz file."""
from __future__ import annotations

import argparse
import sys

from flagstone.cli._common import (
    EPILOG,
    _add_model_options,
    _cache,
    _check_output_file,
    _embedder,
    _read_texts,
    check_with,
    existing_path,
    output_file,
)


def add_parsers(sub) -> None:
    p = sub.add_parser("encode", help="encode texts to an .npz file of dense / sparse / ColBERT outputs",
                       description="Encode a JSONL file (field 'text', optional 'title') or a text file "
                                   "(one text per line) and save the outputs as .npz.",
                       epilog=EPILOG)
    p.add_argument("input", type=existing_path, help="texts: .jsonl or .txt")
    p.add_argument("-o", "--output", type=output_file, required=True, help="output .npz file")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--queries", action="store_true", help="encode as queries (adds the query instruction)")
    p.add_argument("--sparse", action="store_true", help="also output sparse lexical weights (needs M3 heads)")
    p.add_argument("--colbert", action="store_true", help="also output ColBERT vectors (needs M3 heads)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense vectors")
    p.add_argument("--no-truncate", action="store_true",
                   help="fail on texts longer than the max length instead of truncating them")
    _add_model_options(p)
    check_with(p, _check_encode)


def _check_encode(args: argparse.Namespace) -> None:
    _check_output_file(args.output, overwrite=args.overwrite, example="vectors.npz")


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from flagstone._io import atomic_write

    ids, texts = _read_texts(args.input)
    embedder = _embedder(args)
    truncated = embedder.count_truncated(texts)
    if truncated and not args.no_truncate:
        print(f"note: {truncated} of {len(texts)} texts exceed {embedder.settings.max_length} tokens and are "
              "truncated", file=sys.stderr)
    cache = None if args.queries else _cache(args)  # documents come from the cache; queries are always encoded
    if cache is not None:
        from flagstone.models.cache import CachedEmbedder

        embedder = CachedEmbedder(embedder, cache)
    emb = embedder.encode(texts, dense=not args.no_dense, sparse=args.sparse, colbert=args.colbert,
                          is_query=args.queries, truncate=not args.no_truncate)
    arrays = emb.to_arrays()
    arrays["ids"] = np.asarray(ids)
    with atomic_write(args.output, "wb") as handle:
        np.savez(handle, **arrays)
    print(f"encoded {len(texts)} texts ({', '.join(emb.outputs)}) with {embedder.name} -> {args.output}")
    return 0


COMMANDS = {"encode": cmd_encode}
