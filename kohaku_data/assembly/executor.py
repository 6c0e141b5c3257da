"""Where tasks run. `LocalExecutor` uses a local process pool; another engine (e.g. Ray) only
needs the same `map_unordered` — tasks are independent, picklable and carry what they need.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

from kohaku_data.errors import KdataError

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(KdataError):
    """A worker process ended abruptly (killed, or out of memory)."""


class Executor(Protocol):
    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """Run `fn` over `tasks`, yielding results as they finish (any order)."""
        ...


class LocalExecutor:
    """`workers` processes (1 = run in this process). At most `window` tasks are in flight, so
    a long task list is pulled lazily and memory stays flat."""

    def __init__(self, workers: int, window_per_worker: int = 4) -> None:
        self.workers = max(1, workers)
        self.window = self.workers * window_per_worker

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        if self.workers == 1:
            yield from map(fn, tasks)
            return
        # forkserver: children do not inherit this process's threads (polars, sqlite) or locks.
        context = multiprocessing.get_context("forkserver")
        try:
            with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
                yield from _windowed(pool, fn, iter(tasks), self.window)
        except BrokenProcessPool:
            raise WorkerDied(
                "a worker process died (killed, or out of memory: try fewer --workers); the work "
                "finished so far is kept: run the same command again to resume"
            ) from None


def _windowed(pool: ProcessPoolExecutor, fn: Callable[[T], R], tasks: Iterator[T], window: int) -> Iterator[R]:
    pending: set[Future] = set()
    try:
        for task in tasks:
            pending.add(pool.submit(fn, task))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)
    finally:
        for future in pending:
            future.cancel()
