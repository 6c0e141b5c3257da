"""Where tasks run: one small protocol, a local process pool and (optional extra) a Ray cluster.

    executor = make_executor("local", workers=4)          # executors.py; or make_executor("ray", ray_address="auto")
    with executor.session() as run:
        run.submit(fn, task)                               # fn: a module-level function
        for result in run.wait():                          # ≥ 1 finished result, any order
            ...

Tasks are plain, picklable values that carry everything they need and touch no DB, so the same
task gives the same bytes in this process, in a pool worker or on another machine. Every task
runs through `run_recorded`, which notes where it ran and the versions of the libraries that
decide the output bytes; a session refuses a result made with other versions than this
driver's (mixed versions would silently break reproducibility).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kohaku_data.errors import KdataError
from kohaku_data.runtime import worker_pool

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(KdataError):
    """A worker process ended abruptly (killed, or out of memory)."""


class ToolchainMismatch(KdataError):
    """A worker has other versions of the libraries that decide the output bytes."""


@dataclass(frozen=True)
class Recorded:
    """A task's result with where it ran and the library versions it ran with."""

    result: Any
    where: str
    toolchain: dict[str, str]


def run_recorded(fn: Callable[[T], R], task: T) -> Recorded:
    """Run one task; what every executor actually calls in its workers."""
    from kohaku_data.assembly.lock import toolchain_versions

    return Recorded(fn(task), _where(), toolchain_versions())


def _where() -> str:
    """The Ray node id inside a Ray worker, else the host name: "which machine did this"."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


class Session(Protocol):
    in_flight: int  # tasks submitted whose results were not yet returned by wait()

    def submit(self, fn: Callable[[T], R], task: T) -> None:
        """Start `fn(task)` somewhere."""
        ...

    def wait(self) -> list[Any]:
        """Block until at least one task finished; return every finished result (any order)."""
        ...

    def check_visible(self, folder: str) -> None:
        """Refuse (one sentence) unless every worker sees `folder` as this driver does: tasks
        stage results there and read them back on whichever machine they run."""
        ...


class Executor(Protocol):
    window: int  # tasks worth keeping in flight (all workers busy, a short queue)

    def session(self) -> contextlib.AbstractContextManager[Session]:
        """Workers started (or a cluster joined) for the block; checked for equal toolchains."""
        ...

    def describe(self) -> str:
        """A few words for the progress bar: "2 local workers", "ray: 2 nodes, 2 CPUs"."""
        ...


def map_unordered(executor: Executor, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
    """Run `fn` over `tasks`, yielding results as they finish (any order), `window` at a time."""
    with executor.session() as run:
        pending = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and run.in_flight < executor.window:
                task = next(pending, _END)
                if task is _END:
                    exhausted = True
                else:
                    run.submit(fn, task)
            if run.in_flight == 0:
                return
            yield from run.wait()


_END = object()


def check_toolchain(record: Recorded, reference: dict[str, str]) -> None:
    """Refuse a result made with other byte-deciding library versions than the driver's."""
    if record.toolchain != reference:
        raise ToolchainMismatch(toolchain_difference(record.where, record.toolchain, reference))


def toolchain_difference(where: str, theirs: dict[str, str], ours: dict[str, str]) -> str:
    keys = sorted(set(theirs) | set(ours))
    diffs = ", ".join(f"{k} {theirs.get(k, '-')} (driver: {ours.get(k, '-')})"
                      for k in keys if theirs.get(k) != ours.get(k))
    return (f"worker {where} has other versions of the libraries that decide the output bytes: {diffs}; "
            "install the same versions everywhere (pip install -c constraints.txt) before building, "
            "or the shards would differ from machine to machine")


class LocalExecutor:
    """`workers` processes (1 = run in this process). At most `window` tasks are in flight, so
    a long task list is pulled lazily and memory stays flat."""

    def __init__(self, workers: int, window_per_worker: int = 4) -> None:
        self.workers = max(1, workers)
        self.window = self.workers * window_per_worker
        self.placements: Counter[str] = Counter()  # where tasks ran → count (this executor's runs)

    def describe(self) -> str:
        return f"{self.workers} local worker{'s' if self.workers > 1 else ''}"

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        return map_unordered(self, fn, tasks)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        from kohaku_data.assembly.lock import toolchain_versions

        reference = toolchain_versions()
        if self.workers == 1:
            yield _InlineSession(reference, self.placements)
            return
        # forkserver: children do not inherit this process's threads (polars, sqlite) or locks.
        # The workers end with this process: a killed build leaves none writing into its staging.
        context = multiprocessing.get_context("forkserver")
        try:
            with worker_pool(self.workers, context) as pool:
                run = _PoolSession(pool, reference, self.placements)
                try:
                    yield run
                finally:
                    run.cancel_pending()
        except BrokenProcessPool:
            raise WorkerDied(
                "a worker process died (killed, or out of memory: try fewer --workers); the work "
                "finished so far is kept: run the same command again to resume"
            ) from None


class _InlineSession:
    """workers = 1: each task runs at submit, in this process (no pickling, easy to debug)."""

    def __init__(self, reference: dict[str, str], placements: Counter[str]) -> None:
        self._done: list[Any] = []
        self._reference, self._placements = reference, placements

    @property
    def in_flight(self) -> int:
        return len(self._done)

    def submit(self, fn: Callable[[T], R], task: T) -> None:
        record = run_recorded(fn, task)
        self._placements[record.where] += 1
        self._done.append(record.result)

    def wait(self) -> list[Any]:
        done, self._done = self._done, []
        return done

    def check_visible(self, folder: str) -> None:
        return None  # this process


class _PoolSession:
    def __init__(self, pool: ProcessPoolExecutor, reference: dict[str, str], placements: Counter[str]) -> None:
        self._pool, self._reference, self._placements = pool, reference, placements
        self._pending: set[Future] = set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def submit(self, fn: Callable[[T], R], task: T) -> None:
        self._pending.add(self._pool.submit(run_recorded, fn, task))

    def wait(self) -> list[Any]:
        done, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
        results = []
        for future in done:
            record: Recorded = future.result()
            check_toolchain(record, self._reference)
            self._placements[record.where] += 1
            results.append(record.result)
        return results

    def check_visible(self, folder: str) -> None:
        return None  # processes of this machine

    def cancel_pending(self) -> None:
        for future in self._pending:
            future.cancel()
