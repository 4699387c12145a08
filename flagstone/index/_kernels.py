"""Compiled inner loops of the inverted indexes (numba): gather candidates from probed clusters and
posting lists, score them, keep the top k; queries run in parallel.

A document reached through several lists is scored once: posting-list rows whose cluster was probed are
skipped (the cluster scan scored them), the rest are sorted and deduplicated; ``evaluated`` counts
distinct documents.
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
def _dot(query, vectors, row):
    s = np.float32(0.0)
    for j in range(vectors.shape[1]):
        s += query[j] * vectors[row, j]
    return s


@numba.njit(cache=True, inline="always", fastmath=True)
def _pq_score(lut, codes, row):
    # lut is one query's (m * 256) table, flattened; four partial sums break the dependency chain
    m = codes.shape[1]
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    j = 0
    while j + 4 <= m:
        s0 += lut[j * 256 + codes[row, j]]
        s1 += lut[(j + 1) * 256 + codes[row, j + 1]]
        s2 += lut[(j + 2) * 256 + codes[row, j + 2]]
        s3 += lut[(j + 3) * 256 + codes[row, j + 3]]
        j += 4
    while j < m:
        s0 += lut[j * 256 + codes[row, j]]
        j += 1
    return (s0 + s1) + (s2 + s3)


@numba.njit(cache=True, inline="always", fastmath=True)
def _pq_table(rotated_query, codebooks):
    """(m * 256) inner products of a query's sub-vectors with every sub-centroid; ``codebooks`` is
    (m, sub_dim, 256), so the innermost loop runs over 256 contiguous floats (vectorised)."""
    m, sub_dim, n_codes = codebooks.shape
    lut = np.zeros(m * n_codes, dtype=np.float32)
    for j in range(m):
        for t in range(sub_dim):
            x = rotated_query[j * sub_dim + t]
            for c in range(n_codes):
                lut[j * n_codes + c] += x * codebooks[j, t, c]
    return lut


@numba.njit(cache=True, inline="always")
def _probed_flags(probed_row, n_lists):
    flags = np.zeros(n_lists, dtype=np.bool_)
    for p in range(probed_row.shape[0]):
        flags[probed_row[p]] = True
    return flags


@numba.njit(cache=True, inline="always")
def _term_candidates(qi, flags, assign, mask, term_offsets, terms, post_offsets, post_rows):
    """Rows from the query's posting lists that the cluster scan does not already score (their cluster was
    not probed), allowed by ``mask``, sorted by row with duplicates removed: each document is scored once,
    and in storage order, which is cluster order, so nearby rows share cache lines."""
    total = 0
    for t in range(term_offsets[qi], term_offsets[qi + 1]):
        total += post_offsets[terms[t] + 1] - post_offsets[terms[t]]
    buffer = np.empty(total, dtype=np.int64)
    n = 0
    for t in range(term_offsets[qi], term_offsets[qi + 1]):
        term = terms[t]
        for idx in range(post_offsets[term], post_offsets[term + 1]):
            row = post_rows[idx]
            if mask[row] and not flags[assign[row]]:
                buffer[n] = row
                n += 1
    rows = np.sort(buffer[:n])
    unique = 0
    for i in range(n):
        if i == 0 or rows[i] != rows[i - 1]:
            rows[unique] = rows[i]
            unique += 1
    return rows[:unique]


@numba.njit(cache=True, parallel=True, fastmath=True)
def search_lists(queries, vectors, assign, mask, probed, list_offsets, list_rows, term_offsets, terms,
                 post_offsets, post_rows, k):
    """Top-k by inner product with float32 ``vectors`` over the union of each query's probed clusters and
    the posting lists of its terms (a posting row whose cluster was probed is not scored again). Returns
    (rows, scores, evaluated); -1 / -inf pad the rows of queries with fewer than k hits. Plain functions
    only (no closures) so numba caches them."""
    n_queries = queries.shape[0]
    n_lists = list_offsets.shape[0] - 1
    out_rows = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    evaluated = np.zeros(n_queries, dtype=np.int64)
    for qi in numba.prange(n_queries):
        heap_scores = np.empty(k, dtype=np.float32)
        heap_rows = np.empty(k, dtype=np.int64)
        size = 0
        count = 0
        query = queries[qi]
        for p in range(probed.shape[1]):
            c = probed[qi, p]
            for idx in range(list_offsets[c], list_offsets[c + 1]):
                row = list_rows[idx]
                if mask[row]:
                    count += 1
                    score = _dot(query, vectors, row)
                    if size < k or score >= heap_scores[0]:  # most rows stop here
                        size = _offer(heap_scores, heap_rows, size, k, score, row)
        flags = _probed_flags(probed[qi], n_lists)
        extra = _term_candidates(qi, flags, assign, mask, term_offsets, terms, post_offsets, post_rows)
        for row in extra:
            count += 1
            score = _dot(query, vectors, row)
            if size < k or score >= heap_scores[0]:
                size = _offer(heap_scores, heap_rows, size, k, score, row)
        _write_sorted(heap_scores, heap_rows, size, out_scores[qi], out_rows[qi])
        evaluated[qi] = count
    return out_rows, out_scores, evaluated


@numba.njit(cache=True, parallel=True, fastmath=True)
def search_lists_pq(rotated, codebooks, codes, assign, mask, probed, list_offsets, list_rows, term_offsets,
                    terms, post_offsets, post_rows, k):
    """``search_lists`` for PQ codes. Each query (already rotated, for OPQ) builds its (m x 256) table of
    sub-vector inner products here, where it stays in cache, and scores a row with m table look-ups."""
    n_queries = rotated.shape[0]
    n_lists = list_offsets.shape[0] - 1
    out_rows = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    evaluated = np.zeros(n_queries, dtype=np.int64)
    for qi in numba.prange(n_queries):
        heap_scores = np.empty(k, dtype=np.float32)
        heap_rows = np.empty(k, dtype=np.int64)
        size = 0
        count = 0
        lut = _pq_table(rotated[qi], codebooks)
        for p in range(probed.shape[1]):
            c = probed[qi, p]
            for idx in range(list_offsets[c], list_offsets[c + 1]):
                row = list_rows[idx]
                if mask[row]:
                    count += 1
                    score = _pq_score(lut, codes, row)
                    if size < k or score >= heap_scores[0]:  # most rows stop here
                        size = _offer(heap_scores, heap_rows, size, k, score, row)
        flags = _probed_flags(probed[qi], n_lists)
        extra = _term_candidates(qi, flags, assign, mask, term_offsets, terms, post_offsets, post_rows)
        for row in extra:
            count += 1
            score = _pq_score(lut, codes, row)
            if size < k or score >= heap_scores[0]:
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


@numba.njit(cache=True, parallel=True, fastmath=True)
def rerank(queries, vectors, candidates, k):
    """Exact inner products of each query with its candidate rows (-1 = none) in float32 ``vectors`` (which
    may be memory-mapped: only these rows are read); returns the best ``k`` as (rows, scores), best first."""
    n_queries, width = candidates.shape
    dim = vectors.shape[1]
    out_rows = np.full((n_queries, k), -1, dtype=np.int64)
    out_scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    for qi in numba.prange(n_queries):
        heap_scores = np.empty(k, dtype=np.float32)
        heap_rows = np.empty(k, dtype=np.int64)
        size = 0
        query = queries[qi]
        for c in range(width):
            row = candidates[qi, c]
            if row < 0:
                continue
            s = np.float32(0.0)
            for j in range(dim):
                s += query[j] * vectors[row, j]
            size = _offer(heap_scores, heap_rows, size, k, s, row)
        _write_sorted(heap_scores, heap_rows, size, out_scores[qi], out_rows[qi])
    return out_rows, out_scores
