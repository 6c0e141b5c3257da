"""Byte-range reads of a dataset's files, local or behind an fsspec URL.

A map-style reader fetches one sample as one range of its shard (its members lie next to each
other), so no tar is ever scanned. URLs (`s3://…`, `hf://…`, `memory://…`) go through
`kohaku_data.storage` (one ranged request, retries, one-sentence errors). Local files (plain
paths and `file://`) are read with `os.pread` on a descriptor kept open per shard: no open and
no seek per sample.

Descriptors belong to one process: DataLoader workers are forked (or spawned) copies, and a
descriptor shared across a fork would be closed by one process under the other. So they are
tied to the pid that opened them and dropped in any other process; pickling carries only the
location. (fsspec itself drops its cached filesystems after a fork.)
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kohaku_data import storage
from kohaku_data.train.errors import ReaderError

if TYPE_CHECKING:
    import polars as pl

_MAX_OPEN = 64  # descriptors kept open per process (least recently used closed first)


class RangeFiles:
    """Reads whole files and byte ranges of files below one dataset location (folder or URL)."""

    def __init__(self, location: str | os.PathLike) -> None:
        local = storage.local_path(location)
        self.location = str(local.resolve()) if local is not None else os.fspath(location).rstrip("/")
        self.local = local is not None
        self._pid = -1
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()  # threads of one process share the descriptors

    def target(self, name: str) -> storage.Target:
        return storage.join(self.location, name)

    def local_path(self, name: str) -> Path | None:
        """The file's path when the dataset is local (polars then reads only the columns it needs)."""
        return Path(self.location, name) if self.local else None

    def exists(self, name: str) -> bool:
        return storage.is_file(self.target(name))

    def read_parquet(self, name: str, columns: list[str] | None = None) -> "pl.DataFrame":
        """Those columns of a parquet file, the others never fetched (`storage.read_parquet`)."""
        return storage.read_parquet(self.target(name), columns)

    def parquet_schema(self, name: str) -> "dict[str, pl.DataType]":
        """A parquet file's column types (a remote file: its footer only)."""
        return storage.parquet_schema(self.target(name))

    def open(self, name: str) -> IO[bytes]:
        """A random-access binary file object of a whole file (the caller closes it)."""
        if self.local:
            return open(Path(self.location, name), "rb")
        fs, path = storage.url_to_fs(self.target(name))
        return fs.open(path, "rb")

    def read(self, name: str, start: int, size: int) -> bytes:
        """`size` bytes of file `name` from byte `start`; a short read is an error (a cut shard)."""
        try:
            data = self._pread(name, start, size) if self.local else (
                storage.read_range(self.target(name), start, size))
        except FileNotFoundError:
            raise ReaderError(f"{name} is missing from {self.location}: copy the whole dataset "
                              f"folder (shards beside manifest.parquet).") from None
        if len(data) != size:
            raise ReaderError(f"{name} ends before byte {start + size}: the shard is cut short; "
                              f"re-copy the dataset or run `kdata verify` on it.")
        return data

    def _pread(self, name: str, start: int, size: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors (and lock) are not ours
            self._fds, self._lock, self._pid = OrderedDict(), threading.Lock(), os.getpid()
        # One lock around open, evict and read: another thread may not close a descriptor
        # (least recently used) while this one reads from it.
        with self._lock:
            fd = self._fds.pop(name, None)
            if fd is None:
                fd = os.open(os.path.join(self.location, name), os.O_RDONLY)
                while len(self._fds) >= _MAX_OPEN:
                    os.close(self._fds.popitem(last=False)[1])
            self._fds[name] = fd  # most recently used last
            return os.pread(fd, size, start)

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to tidy
            pass
