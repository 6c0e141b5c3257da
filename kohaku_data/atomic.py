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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        name_failed_write(exc, path, tmp)
        raise


def name_failed_write(exc: BaseException, path: Path, tmp: Path | None = None) -> None:
    """Note on an OSError the file the user knows, so the CLI can say which file a full disk or
    a size limit stopped (see errors.write_problem): `write()` carries no file name, and an
    `open()` of the temporary file names the temporary file, not `path`."""
    if isinstance(exc, OSError) and (exc.filename is None or (tmp is not None and exc.filename == str(tmp))):
        exc.add_note(f"{WRITING_NOTE}{path}")


WRITING_NOTE = "while writing "


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
