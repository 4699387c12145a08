"""The ``flagstone demo`` command: index Python's docstrings and answer example queries."""
from __future__ import annotations

import argparse

from flagstone.cli._common import EPILOG, _add_model_options, _retriever, _snippet, positive_int


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="index the Python standard library's docstrings and answer example queries",
                       description="The main job end to end on embedded defaults: index a corpus every machine "
                                   "has (Python's own docstrings) and show results from each retrieval mode.",
                       epilog=EPILOG)
    p.add_argument("--docs", type=positive_int, default=2000, help="number of docstrings to index (default: 2000)")
    p.add_argument("--query", action="append", default=None, help="a query to ask (repeatable)")
    p.add_argument("-k", type=positive_int, default=3, help="results shown per mode (default: 3)")
    _add_model_options(p)


DEMO_QUERIES = (
    "parse command line arguments",
    "compress a file with gzip",
    "read rows from a CSV file",
    "send an email message over SMTP",
)


def cmd_demo(args: argparse.Namespace) -> int:
    from flagstone.corpora import python_docstrings

    ids, texts = python_docstrings(args.docs)
    print(f"Indexing {len(ids)} docstrings of the Python standard library...")
    retriever = _retriever(args)
    retriever.fit(ids, texts)
    embedder = retriever.embedder
    print(f"Model: {embedder!r}")
    missing = [o for o in ("sparse", "colbert") if o not in embedder.available_outputs]
    if missing:
        print(f"Modes {', '.join(missing)}: not available for {embedder.name} (no M3 heads: sparse_linear.pt / "
              "colbert_linear.pt); use bge-m3 or a model trained with them.")
    by_id = dict(zip(ids, texts))
    queries = args.query or list(DEMO_QUERIES)
    results = {mode: retriever.search(queries, mode=mode, k=args.k) for mode in retriever.modes}
    for qi, query in enumerate(queries):
        print(f"\nQ: {query}")
        for mode, hits in results.items():
            print(f"  [{mode}]")
            for doc_id, score in zip(hits.ids[qi], hits.scores[qi]):
                print(f"    {score:7.3f}  {doc_id}: {_snippet(by_id[doc_id], 70)}")
    return 0


COMMANDS = {"demo": cmd_demo}
