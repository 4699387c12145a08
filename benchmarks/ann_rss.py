"""Resident memory of one saved index, measured in a fresh process (run by ann.py, one call per index).

    python benchmarks/ann_rss.py KIND INDEX_PATH QUERIES.pkl

KIND is flagstone, faiss or hnswlib. The process first loads the index once and searches it (so libraries
and compiled kernels for exactly these array types are in place), drops it and hands freed heap back to
the system (glibc malloc_trim); then it reads /proc/self/status, loads the index again as a deployment
would (Flagstone: ``load`` without mmap, refinement vectors memory-mapped; faiss: ``read_index``; hnswlib:
``load_index``), searches the queries and reads it again. Prints one JSON line: the growth of RssAnon (heap:
the index in RAM) and of RssFile (memory-mapped file pages touched), in bytes.
"""
from __future__ import annotations

import ctypes
import gc
import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np


def resident() -> tuple[int, int]:
    status = Path("/proc/self/status").read_text()
    kb = {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("RssAnon", "RssFile")}
    return kb["RssAnon"] * 1024, kb["RssFile"] * 1024


def main(kind: str, path: str, queries_file: str) -> None:
    with open(queries_file, "rb") as handle:
        vectors, terms, k = pickle.load(handle)
    if kind == "flagstone":
        from flagstone.index import load
        from flagstone.index.hi2 import HI2Index
        from flagstone.models.embeddings import Embeddings

        def search(index, n):
            if isinstance(index, HI2Index):
                return index.search(Embeddings(dense=vectors[:n], sparse=terms.take(np.arange(n))), k)
            return index.search(vectors[:n], k)

        opened = lambda: load(path)  # noqa: E731
    elif kind == "faiss":
        import faiss

        faiss.omp_set_num_threads(2)
        def search(index, n):
            return index.search(vectors[:n], k)

        opened = lambda: faiss.read_index(path)  # noqa: E731
    else:
        import hnswlib

        def search(index, n):
            return index.knn_query(vectors[:n], k=k, num_threads=2)

        def opened():
            index = hnswlib.Index(space="ip", dim=vectors.shape[1])
            index.load_index(path)
            index.set_ef(max(k, 100))
            return index

    warm = opened()
    search(warm, len(vectors))
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    anon0, file0 = resident()
    index = opened()
    search(index, len(vectors))
    gc.collect()
    anon1, file1 = resident()
    print(json.dumps({"rss_anon_bytes": anon1 - anon0, "rss_file_bytes": file1 - file0}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
