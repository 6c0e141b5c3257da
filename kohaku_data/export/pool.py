"""Running an export's file writes on a few threads.

The writes are syscalls that release the GIL (`open(O_CREAT)`, `copy_file_range`, `write`),
and on a busy file system a create mostly waits (for the journal, the directory lock), so a few
threads overlap the waits, and Python work (planning a chunk, a parquet footer) overlaps the
kernel's copying.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_threads(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """`fn` over `items` on `threads` threads, results as they finish (any order). At most
    2 x `threads` items are in flight, so a lazy `items` is never drawn into memory at once. The
    first error cancels what has not started and is raised once the running ones end."""
    with ThreadPoolExecutor(threads, thread_name_prefix="kdata-export") as pool:
        pending: set = set()
        try:
            for item in items:
                pending.add(pool.submit(fn, item))
                if len(pending) >= 2 * threads:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
            for future in as_completed(pending):
                yield future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
