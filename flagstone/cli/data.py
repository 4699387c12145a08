"""The ``flagstone data`` commands: prepare evaluation data (``data carve-split``: a seeded validation split)."""
from __future__ import annotations

import argparse
import json

from flagstone.cli._common import EPILOG, existing_folder, output_folder, positive_int, probability
from flagstone.errors import FlagstoneError


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="prepare evaluation data: carve a seeded validation split from training queries",
                       description="carve-split: move a seeded share of a BEIR folder's training queries into a "
                                   "validation split, written with the rest as a new BEIR folder (the source is "
                                   "only read) with split.json recording the seed, sizes and hashes.",
                       epilog=EPILOG)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    help_text = ("carve a validation split (default: dev) from a split's queries (default: train) into a new BEIR "
                 "folder: train on qrels/train.tsv there, validate on qrels/dev.tsv, keep the test split for the end")
    c = dsub.add_parser("carve-split", help=help_text, description=help_text + ". Which queries are carved depends "
                        "only on --seed and the query ids (ordered by SHA-256 of '<seed>:<id>').", epilog=EPILOG)
    c.add_argument("data", type=existing_folder, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    c.add_argument("-o", "--output", type=output_folder, required=True,
                   help="new folder for the split (corpus and queries copied, qrels/<name>.tsv, qrels/<from>.tsv with "
                        "the other queries, split.json)")
    share = c.add_mutually_exclusive_group(required=True)
    share.add_argument("--fraction", type=probability, default=None,
                       help="share of the queries to carve, rounded up (0 < F < 1)")
    share.add_argument("--count", type=positive_int, default=None, help="number of queries to carve")
    c.add_argument("--seed", type=int, required=True, help="seed of the choice (recorded in split.json)")
    c.add_argument("--from", dest="source_split", default="train", help="split whose queries are carved (default: train)")
    c.add_argument("--name", default="dev", help="name of the carved split (default: dev)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if Flagstone wrote it (a folder holding anything else is never "
                        "replaced)")


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command is None:
        raise FlagstoneError("choose an action: flagstone data carve-split (see --help)")
    from flagstone.evaluation.splits import carve_split

    manifest = carve_split(args.data, args.output, seed=args.seed, fraction=args.fraction, count=args.count,
                           source_split=args.source_split, name=args.name, overwrite=args.overwrite)
    sizes = manifest["splits"]
    print(json.dumps({"output": args.output, "seed": args.seed,
                      **{name: {"queries": s["queries"], "query_ids_sha256": s["query_ids_sha256"][:16]}
                         for name, s in sizes.items()}}, indent=2))
    return 0


COMMANDS = {"data": cmd_data}
