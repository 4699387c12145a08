"""A bounded pool for slow model work (rerank, ask / generation), apart from the event loop and from the thread
pool that runs the plain endpoints.

Without it, slow model calls ran on the same 40 anyio worker threads as every other sync endpoint: one /ask
and 45 /rerank calls took them all and /health waited 22 s. Here at most ``workers`` calls run and ``queue``
more wait; a call beyond that is refused at once with 503 and Retry-After instead of queueing without bound.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from flagstone.server.problems import HTTPProblem

T = TypeVar("T")


class ModelPool:
    def __init__(self, workers: int, queue: int, retry_after_s: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"model pool needs workers >= 1 and queue >= 0 (got {workers}, {queue})")
        self.workers, self.queue, self.retry_after_s = workers, queue, retry_after_s
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="flagstone-model")
        # one slot per call running or waiting; freed when the call ends in its thread, not when the request
        # ends: a client that disconnects does not stop the model work, so its slot stays taken until it ends
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._lock = threading.Lock()
        self.in_flight = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a model thread; ``HTTPProblem(503)`` with Retry-After at once when the pool is full."""
        if not self._slots.acquire(blocking=False):
            raise HTTPProblem(503, "busy", f"the model is busy ({self.workers} running, {self.queue} waiting); "
                                           f"retry in {self.retry_after_s} s",
                              headers={"Retry-After": str(self.retry_after_s)})
        with self._lock:
            self.in_flight += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:  # shut down: the slot was never handed to a call
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future | None) -> None:
        with self._lock:
            self.in_flight -= 1
        self._slots.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
