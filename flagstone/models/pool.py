"""Encoding on many cores: worker processes that each hold a copy of one embedder.

Each worker builds the embedder from the arguments the parent's was built with and runs with
``threads_per_process`` torch threads; the parent splits the texts into contiguous chunks, gathers the
float32 outputs in input order, and quantises / converts them once over all the texts (so int8 ranges are
those a single process would compute).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from flagstone.models.embeddings import Embeddings
from flagstone.models.incontext import ExampleLike
from flagstone.models.quantization import Precision
from flagstone.models.shaping import check_dense_options, finish_dense

# an Embedder is typed Any here: flagstone.models.embedder imports this module, so it cannot import that one
Embedder = Any

_worker_embedder: Any = None  # the embedder of this worker process


def _start_worker(embedder_class: Any, init_kwargs: dict[str, Any], threads: int) -> None:
    import torch

    global _worker_embedder
    torch.set_num_threads(threads)
    _worker_embedder = embedder_class(**{**init_kwargs, "show_progress": False})


def _encode_in_worker(texts: list[str], options: dict[str, Any]) -> Embeddings:
    assert _worker_embedder is not None, "worker started without its embedder"
    return _worker_embedder._encode_floats(texts, **options)


class EmbedderPool:
    """Worker processes encoding with copies of one embedder (see :meth:`Embedder.pool`)."""

    def __init__(self, embedder: Embedder, *, processes: int = 2, threads_per_process: int = 1) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if processes < 1 or threads_per_process < 1:
            raise ValueError("processes and threads_per_process must be at least 1")
        self.processes = processes
        self._checker = embedder  # checks requests before any work is sent
        init_kwargs = embedder._init_kwargs
        # spawn, not fork: a forked copy of a process that already ran torch can deadlock in its thread pools
        self._executor = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(type(embedder), init_kwargs, threads_per_process))

    def __enter__(self) -> EmbedderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (waits for running chunks)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        is_query: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
        precision: Precision = "float32",
        calibration_embeddings: np.ndarray | None = None,
        output: Literal["numpy", "torch"] = "numpy",
        truncate: bool = True,
        chunk_size: int | None = None,
        examples: Sequence[ExampleLike] | None = None,
    ) -> Embeddings:
        """:meth:`Embedder.encode` spread over the workers, in chunks of ``chunk_size`` texts (default: four
        chunks per process); the same result as encoding in one process."""
        checker = self._checker
        texts = checker.check_request(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=is_query)
        check_dense_options(dense=dense, sparse=sparse, colbert=colbert, truncate_dim=truncate_dim, dim=checker.dim,
                            precision=precision, output=output)
        # a bad prompt or example fails here, before any work is sent out
        checker.text_template(is_query=is_query, prompt=prompt, prompt_name=prompt_name, examples=examples)
        if chunk_size is None:
            chunk_size = max(1, math.ceil(len(texts) / (4 * self.processes)))
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        options = {"dense": dense, "sparse": sparse, "colbert": colbert, "is_query": is_query, "prompt": prompt,
                   "prompt_name": prompt_name, "batch_size": batch_size, "max_length": max_length,
                   "normalize": normalize, "truncate_dim": truncate_dim, "truncate": truncate,
                   "show_progress": False, "examples": examples}
        futures = [self._executor.submit(_encode_in_worker, texts[i:i + chunk_size], options)
                   for i in range(0, len(texts), chunk_size)]
        floats = Embeddings.concat([f.result() for f in futures])
        return finish_dense(floats, precision=precision, calibration_embeddings=calibration_embeddings,
                            output=output)

    def encode_queries(self, texts: str | Sequence[str], *, dense: bool = True, sparse: bool = False,
                       colbert: bool = False, prompt: str | None = None, prompt_name: str | None = None,
                       normalize: bool | None = None, truncate_dim: int | None = None,
                       precision: Precision = "float32", calibration_embeddings: np.ndarray | None = None,
                       output: Literal["numpy", "torch"] = "numpy",
                       examples: Sequence[ExampleLike] | None = None) -> Embeddings:
        return self.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=True, prompt=prompt,
                           prompt_name=prompt_name, normalize=normalize, truncate_dim=truncate_dim,
                           precision=precision, calibration_embeddings=calibration_embeddings, output=output,
                           examples=examples)

    def encode_corpus(self, texts: str | Sequence[str], *, dense: bool = True, sparse: bool = False,
                      colbert: bool = False, prompt: str | None = None, prompt_name: str | None = None,
                      normalize: bool | None = None, truncate_dim: int | None = None,
                      precision: Precision = "float32", calibration_embeddings: np.ndarray | None = None,
                      output: Literal["numpy", "torch"] = "numpy") -> Embeddings:
        return self.encode(texts, dense=dense, sparse=sparse, colbert=colbert, is_query=False, prompt=prompt,
                           prompt_name=prompt_name, normalize=normalize, truncate_dim=truncate_dim,
                           precision=precision, calibration_embeddings=calibration_embeddings, output=output)
