"""Byte-range reads of a dataset's files, local or behind an fsspec URL.

A map-style reader fetches one sample as one range of its shard (its members lie next to each
other), so no tar is ever scanned. Local paths use `os.pread` on a descriptor kept open per
shard (no seek, so threads may share it); URLs (`s3://…`, `https://…`, `file://…`) go through
fsspec's `cat_file(path, start, end)` when fsspec is installed.

Open descriptors and filesystem objects belong to one process: DataLoader workers are forked
(or spawned) copies, and a descriptor or an fsspec session shared across a fork would mix up
offsets and sockets. So every handle is tied to the pid that opened it and dropped in any other
process; pickling (spawn) carries only the location.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from kohaku_data.train.errors import ReaderError

_MAX_OPEN = 64  # descriptors kept open per process (least recently used closed first)


def is_url(location: str) -> bool:
    return "://" in location


class RangeFiles:
    """Reads byte ranges of files below one dataset location (a folder or a URL)."""

    def __init__(self, location: str) -> None:
        self.location = location.rstrip("/") if is_url(location) else os.path.abspath(location)
        self._pid = -1
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._fs: Any = None
        self._root = ""

    # -- whole files (the manifest) --------------------------------------------------------------
    def open(self, name: str):
        """A binary file object for a whole file (the caller closes it)."""
        if not is_url(self.location):
            return open(os.path.join(self.location, name), "rb")
        fs, root = self._filesystem()
        return fs.open(f"{root}/{name}", "rb")

    def local_path(self, name: str) -> str | None:
        """The file's path when the dataset is local (polars then reads only the columns it needs)."""
        return None if is_url(self.location) else os.path.join(self.location, name)

    def exists(self, name: str) -> bool:
        if not is_url(self.location):
            return os.path.isfile(os.path.join(self.location, name))
        fs, root = self._filesystem()
        return fs.isfile(f"{root}/{name}")

    # -- ranges ------------------------------------------------------------------------------------
    def read(self, name: str, start: int, size: int) -> bytes:
        """`size` bytes of file `name` from byte `start`; short reads are an error (a cut shard)."""
        self._check_pid()
        if is_url(self.location):
            fs, root = self._filesystem()
            data = fs.cat_file(f"{root}/{name}", start=start, end=start + size)
        else:
            data = os.pread(self._fd(name), size, start)
        if len(data) != size:
            raise ReaderError(f"{name} ends before byte {start + size}: the shard is cut short; "
                              f"re-copy the dataset or run `kdata verify` on it.")
        return data

    def _fd(self, name: str) -> int:
        fd = self._fds.pop(name, None)
        if fd is None:
            try:
                fd = os.open(os.path.join(self.location, name), os.O_RDONLY)
            except FileNotFoundError:
                raise ReaderError(f"{name} is missing from {self.location}: copy the whole dataset "
                                  f"folder (shards beside manifest.parquet).") from None
            while len(self._fds) >= _MAX_OPEN:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[name] = fd  # most recently used last
        return fd

    def _filesystem(self):
        self._check_pid()
        if self._fs is None:
            try:
                from fsspec.core import url_to_fs
            except ImportError:
                raise ReaderError(f"{self.location} is a URL and fsspec is not installed: "
                                  f"pip install 'kohaku-data[torch]' (or fsspec and its backend).") from None
            self._fs, self._root = url_to_fs(self.location)
            self._root = self._root.rstrip("/")
        return self._fs, self._root

    def _check_pid(self) -> None:
        """Drop the handles of another process (we are a forked worker): reopen lazily here."""
        pid = os.getpid()
        if pid != self._pid:
            self._fds, self._fs, self._pid = OrderedDict(), None, pid

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds, self._fs = OrderedDict(), None

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["location"])

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to tidy
            pass
