"""The ``flagstone`` command: a thin layer over the library. User mistakes print one line, no traceback.

The parser and ``main`` live here; each command group is a module of this package (``add_parsers`` and
``COMMANDS``) and the helpers they share are in ``_common``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flagstone.cli import demo, encode, evaluate, index, models, rag, search, serve, train
from flagstone.cli._common import EPILOG
from flagstone.errors import FlagstoneError

# in the order the commands are listed by --help
GROUPS = (demo, models, encode, search, evaluate, index, train, rag, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flagstone",
        description="Retrieval toolkit: dense, sparse (lexical) and ColBERT embeddings, BM25, hybrid search, "
                    "reranking, training, evaluation, and retrieval-augmented answering.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


COMMANDS = {name: func for group in GROUPS for name, func in group.COMMANDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    for name in ("batch_size", "k", "docs", "max_length", "max_queries", "n_lists", "n_probe", "rerank_depth",
                 "epochs", "group_size", "gradient_accumulation", "max_steps", "negatives", "checkpoint_every",
                 "chunk_tokens", "max_new_tokens", "port", "max_texts", "max_chars", "max_batch"):
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and v < 1 for v in values):
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    weight = getattr(args, "first_stage_weight", 0.0)
    if not 0.0 <= weight <= 1.0:
        parser.error("--first-stage-weight must be between 0 and 1")
    try:
        return COMMANDS[args.command](args)
    except (FlagstoneError, ValueError) as exc:
        print(f"flagstone: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head or less that closed early
        return 0
    except OSError as exc:  # permissions, full disk, a folder where a file was expected
        print(f"flagstone: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flagstone: interrupted", file=sys.stderr)
        return 130
