"""Compiled inner loops of the inverted indexes (numba): gather candidates from probed clusters and
posting lists, score them, keep the top k; queries run in parallel.

Each query marks the rows it has scored in a private bitmap, so a document reached through several
lists is scored once, and ``evaluated`` counts distinct documents.
"""
from __future__ import annotations

import numpy as np

from flagstone.errors import require_extra

require_extra("index", ("numba",), "IVF and HI² search need")
import numba  # noqa: E402  (after the check, so a missing numba names its extra)


@numba.njit(cache=True, inline="always")
def _worse(score_a, row_a, score_b, row_b):
    # the heap's order: a lower score, or the same score at a higher row, ranks worse; so the root is the
    # hit to evict even among ties (the higher row goes first: results keep the lower rows on ties)
    return score_a < score_b or (score_a == score_b and row_a > row_b)


@numba.njit(cache=True, inline="always", fastmath=True)
def _sift_down(scores, rows, k):
    # min-heap (by _worse) on scores[0:k]; restore the heap after replacing the root
    i = 0
    while True:
        left = 2 * i + 1
        if left >= k:
            break
        child = left
        right = left + 1
        if right < k and _worse(scores[right], rows[right], scores[left], rows[left]):
            child = right
        if _worse(scores[child], rows[child], scores[i], rows[i]):
            scores[i], scores[child] = scores[child], scores[i]
            rows[i], rows[child] = rows[child], rows[i]
            i = child
        else:
            break


@numba.njit(cache=True, inline="always", fastmath=True)
def _sift_up(scores, rows, i):
    while i > 0:
        parent = (i - 1) // 2
        if _worse(scores[i], rows[i], scores[parent], rows[parent]):
            scores[i], scores[parent] = scores[parent], scores[i]
            rows[i], rows[parent] = rows[parent], rows[i]
            i = parent
        else:
            break


@numba.njit(cache=True, inline="always", fastmath=True)
def _offer(heap_scores, heap_rows, size, k, score, row):
    if size < k:
        heap_scores[size] = score
        heap_rows[size] = row
        _sift_up(heap_scores, heap_rows, size)
        return size + 1
    if score > heap_scores[0] or (score == heap_scores[0] and row < heap_rows[0]):
        heap_scores[0] = score
        heap_rows[0] = row
        _sift_down(heap_scores, heap_rows, k)
    return size


@numba.njit(cache=True)
def _write_sorted(heap_scores, heap_rows, size, out_scores, out_rows):
    """Write a heap's entries best first into the output row; equal scores ordered by row (deterministic)."""
    order = np.argsort(-heap_scores[:size], kind="mergesort")
    srt_s = heap_scores[:size][order]
    srt_r = heap_rows[:size][order]
    start = 0
    while start < size:
        end = start + 1
        while end < size and srt_s[end] == srt_s[start]:
            end += 1
        if end - start > 1:
            srt_r[start:end] = np.sort(srt_r[start:end])
        start = end
    out_rows[:size] = srt_r
    out_scores[:size] = srt_s


@numba.njit(cache=True, inline="always", fastmath=True)
def _score(query, vectors, codes, lut, row, use_pq):
    s = np.float32(0.0)
    if use_pq:
        for j in range(codes.shape[1]):
            s += lut[j, codes[row, j]]
    else:
        for j in range(vectors.shape[1]):
            s += query[j] * vectors[row, j]
    return s


@numba.njit(cache=True, parallel=True, fastmath=True)
def search_lists(queries, vectors, codes, luts, use_pq, mask, probed, list_offsets, list_rows, term_offsets, terms,
                 post_offsets, post_rows, k):
    """Top-k over the union of each query's probed clusters and the posting lists of its terms.

    Rows are scored from float32 ``vectors`` or, with ``use_pq``, from uint8 PQ ``codes`` through ``luts``
    (queries x m x 256); the unused one may be an empty array. Returns (rows, scores, evaluated); -1 / -inf
    pad the rows of queries with fewer than k hits. One plain function (no closures) so numba caches it.
    """
    n_queries = queries.shape[0]
    n_rows = mask.shape[0]
    out_rows = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    evaluated = np.zeros(n_queries, dtype=np.int64)
    for qi in numba.prange(n_queries):
        seen = np.zeros(n_rows, dtype=np.bool_)
        heap_scores = np.empty(k, dtype=np.float32)
        heap_rows = np.empty(k, dtype=np.int64)
        size = 0
        count = 0
        query = queries[qi]
        lut = luts[qi]
        for p in range(probed.shape[1]):
            c = probed[qi, p]
            for idx in range(list_offsets[c], list_offsets[c + 1]):
                row = list_rows[idx]
                if mask[row]:
                    seen[row] = True
                    count += 1
                    score = _score(query, vectors, codes, lut, row, use_pq)
                    size = _offer(heap_scores, heap_rows, size, k, score, row)
        for t in range(term_offsets[qi], term_offsets[qi + 1]):
            term = terms[t]
            for idx in range(post_offsets[term], post_offsets[term + 1]):
                row = post_rows[idx]
                if mask[row] and not seen[row]:
                    seen[row] = True
                    count += 1
                    score = _score(query, vectors, codes, lut, row, use_pq)
                    size = _offer(heap_scores, heap_rows, size, k, score, row)
        _write_sorted(heap_scores, heap_rows, size, out_scores[qi], out_rows[qi])
        evaluated[qi] = count
    return out_rows, out_scores, evaluated


@numba.njit(cache=True, parallel=True)
def top_k_rows(scores, k):
    """Best ``k`` columns of each row of a (queries x rows) score matrix, best first, ties to the lower
    column; -inf entries are never returned (-1 / -inf padding instead). A heap rejects most columns with
    one comparison, which beats a full partition when k is small."""
    n_queries, n = scores.shape
    out_rows = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    for qi in numba.prange(n_queries):
        heap_scores = np.empty(k, dtype=np.float32)
        heap_rows = np.empty(k, dtype=np.int64)
        size = 0
        row_scores = scores[qi]
        for col in range(n):
            s = row_scores[col]
            if s == -np.inf:
                continue
            if size == k and s <= heap_scores[0]:
                continue  # ties keep the lower column, which came first
            size = _offer(heap_scores, heap_rows, size, k, s, col)
        _write_sorted(heap_scores, heap_rows, size, out_scores[qi], out_rows[qi])
    return out_rows, out_scores
