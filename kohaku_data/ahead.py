"""An iterator's items made by a thread of its own, a few ahead of the one who takes them.

For producers that spend their time where the GIL is released (sqlite stepping, numpy): the
page fetch of `kdata caption` (db/pages.py) and the chunk generation of `kdata sample`
(sample/metadata.py) overlap the consumer's work that way. No numpy or polars here: the page
fetch starts before they are imported.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_POLL_S = 0.1  # how often a producer blocked on a full queue looks whether it was stopped


class Ahead(Generic[T]):
    """The items of `produce()`, in order, made by a thread started at once, at most `depth`
    ahead. An error in the thread is raised where the items are taken. `close()` (or leaving
    the `with`) stops the thread before its next item, after calling `interrupt` to cut short
    what it is doing, and waits for it; the producer's iterator is closed in the thread."""

    def __init__(self, produce: Callable[[], Iterable[T]], depth: int, name: str,
                 interrupt: Callable[[], None] = lambda: None) -> None:
        self._items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._interrupt = interrupt
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[], Iterable[T]]) -> None:
        try:
            items = iter(produce())
            try:
                while not self._stop.is_set():
                    item = next(items, _END)
                    if item is _END:
                        self._put(("end", None))
                        return
                    if not self._put(("item", item)):
                        return
                    del item  # held by the queue only, not by this frame while the next is made
            finally:
                getattr(items, "close", lambda: None)()
        except BaseException as exc:  # handed to the consumer, raised there
            if not self._stop.is_set():  # (after close: an interrupted producer, nobody listening)
                self._put(("error", exc))

    def _put(self, entry: tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._interrupt()
        self._thread.join()

    def __enter__(self) -> "Ahead[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()
