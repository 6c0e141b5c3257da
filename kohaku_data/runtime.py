"""Process settings: for bulk commands (`kdata caption`), allocators keep freed memory for
reuse and numpy's BLAS starts no thread pool; and pool workers that end with their driver.

BLAS: numpy's OpenBLAS starts a thread per core at import, and they spin for a while after
each wake-up; kdata never multiplies matrices, yet on 2 cores those threads took 0.18 s of
the 1.6 s of CPU of a 200k-post caption run. One BLAS thread is the same maths, no pool.

Allocators:
A caption job allocates and frees the same few hundred MB for every page of 25k posts. By
default both allocators hand that memory back to the kernel at once — glibc trims the heap top
and unmaps big blocks, polars' jemalloc purges dirty pages after a short decay — so the next
page faults every page in again and the kernel zeroes it: measured on 1M posts, 1.8 of 10.3 s
of CPU went to page faults and `clear_page`. Keeping freed memory for 10 s and raising glibc's
trim threshold cuts that to ~0.7 s; peak memory is unchanged (the same pages are reused).
"""

from __future__ import annotations

import ctypes
import os
import select
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_BLAS_THREAD_ENV = "OPENBLAS_NUM_THREADS"  # numpy's wheels bundle OpenBLAS (pthreads build)
# jemalloc (polars' allocator, symbols prefixed `_rjem_`) reads this when polars is loaded.
_JEMALLOC_ENV = "_RJEM_MALLOC_CONF"
_JEMALLOC_CONF = "dirty_decay_ms:10000,muzzy_decay_ms:10000"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_GLIBC_TRIM_BYTES = 1 << 30
_GLIBC_MMAP_BYTES = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit


def bulk_process() -> None:
    """Both settings, before numpy and polars are imported (where they are already loaded, as
    under a library caller, the loaded libraries keep theirs)."""
    no_blas_threads()
    keep_freed_memory()


def no_blas_threads() -> None:
    """One BLAS thread for this process and the workers it starts (a user's setting wins)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault(_BLAS_THREAD_ENV, "1")


def worker_pool(workers: int, context: Any = None) -> ProcessPoolExecutor:
    """A process pool whose workers end with this process (see `exit_with`)."""
    return ProcessPoolExecutor(workers, mp_context=context, initializer=exit_with, initargs=(os.getpid(),))


def exit_with(driver: int) -> None:
    """In a pool worker: end as soon as process `driver` ends, however it ends.

    Pool workers hold the write end of their own task queue (and, under forkserver, of the
    server's liveness pipe), so when the driver is killed they never see EOF: each leftover
    worker (and its forkserver) stays forever, and one in the middle of a task finishes it —
    writing into a build's staging that the rerun may already have cleaned. A thread waits on
    the driver's pidfd (Linux; elsewhere it checks once a second) and ends this process."""
    threading.Thread(target=_wait_then_exit, args=(driver,), name="kdata-exit-with-driver", daemon=True).start()


def _wait_then_exit(driver: int) -> None:
    try:
        fd = os.pidfd_open(driver)
    except (AttributeError, OSError):  # no pidfd (or the driver is already gone): poll
        while _alive(driver):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a reused pid)
        return True
    return True


def keep_freed_memory() -> None:
    """Apply the settings above to this process (and, through the environment, to the worker
    processes it starts). A user's own `_RJEM_MALLOC_CONF` wins; polars already loaded
    (a library caller) keeps its settings; not on glibc: nothing to do."""
    if "polars" not in sys.modules:
        os.environ.setdefault(_JEMALLOC_ENV, _JEMALLOC_CONF)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)  # the interpreter's own symbols, libc's among them
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_BYTES)
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_BYTES)
    except (OSError, AttributeError):  # musl and others: no mallopt
        return
