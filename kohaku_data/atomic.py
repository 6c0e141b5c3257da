"""Atomic file writes: readers see the old file or the new one, never a part of one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A fresh temporary path beside `path` to write the new file to. When the block ends
    normally it is renamed over `path`; on an error it is removed and `path` is untouched.

    The writer creates the file, so it gets the usual permissions (umask): `tempfile.mkstemp`
    would make it 0600, unreadable to the other users of a shared dataset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    `durable` also fsyncs before the rename: for files whose presence is a promise (a dataset's
    lock, index and manifests), not for outputs a rerun can simply redo.
    """
    with replacing(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
