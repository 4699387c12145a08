"""The ``flagstone`` command: a thin layer over the library. User mistakes print one line, no traceback.

The parser and ``main`` live here; each command group is a module of this package (``add_parsers`` and
``COMMANDS``) and the helpers they share are in ``_common``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from flagstone.cli import data, demo, encode, evaluate, index, models, rag, search, serve, train
from flagstone.cli._common import EPILOG, ArgumentParser
from flagstone.errors import FlagstoneError, FlagstoneWarning

# in the order the commands are listed by --help
GROUPS = (demo, models, encode, search, evaluate, data, index, train, rag, serve)


def version() -> str:
    """The installed distribution's version; a source checkout on PYTHONPATH has no metadata, so it falls
    back to the package's own ``__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("flagstone")
    except PackageNotFoundError:
        from flagstone._version import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="flagstone",
        description="Retrieval toolkit: dense, sparse (lexical) and ColBERT embeddings, BM25, hybrid search, "
                    "reranking, training, evaluation, and retrieval-augmented answering.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"flagstone {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


COMMANDS = {name: func for group in GROUPS for name, func in group.COMMANDS.items()}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Flagstone's own warnings as one line; any other warning as Python shows it."""
    if issubclass(category, FlagstoneWarning):
        print(f"flagstone: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        check = getattr(args, "_check", None)  # the command's checks across arguments, before any work
        if check is not None:
            check(args)
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
