"""Placing exported files: tar members copied out by offset, hard links, small texts.

A member is copied with `os.copy_file_range` from the shard at the member's data offset: the
kernel moves the bytes (a file system that can share extents may even reflink them), nothing
passes through Python. Hard links need a file that already exists: `link_from` is an earlier
export (any format) whose `images/` holds the same member, checked by size and sha256 (by size
alone when that export is a finished one of the same build, per its `kdata-export.json`).

Image and caption files are written under their final names, not to a temporary name renamed
after: the per-file rename (and its directory update) was a third of an export's cost. Resume
stays safe because the check is exact: an image counts as in place only at its member's size
(a copy cut short is shorter: `copy_file_range` appends in order) and a caption only when its
bytes are the caption's; anything else is unlinked (never written through: it may be a hard
link shared with another export) and written again. A write that fails removes its partial
file. The folder's `kdata-export.json` says `complete: false` until every file is in place.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from kohaku_data.atomic import name_failed_write, write_atomic

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def in_place(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def present_sizes(folder: Path) -> dict[str, int]:
    """Name -> size of the plain files in `folder`: one directory scan instead of a stat per file."""
    try:
        with os.scandir(folder) as entries:
            return {e.name: e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False)}
    except FileNotFoundError:
        return {}


def copy_range(src: int, dst: int, offset: int, size: int) -> None:
    """`size` bytes at `offset` of `src` appended at `dst`'s position (in the kernel when it can)."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            write_all(dst, os.pread(src, size - done, offset + done))  # no copy_file_range here
            return
        if n == 0:
            raise OSError(errno.EIO, "the shard ended before the member did")
        done += n


def write_all(fd: int, data: bytes | bytearray) -> None:
    """All of `data` at `fd`'s position (`os.write` may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_member(src: int, offset: int, size: int, dst: Path, *, replace: bool) -> None:
    """A new file `dst` holding the `size` bytes at `offset` of `src`; `replace`: unlink an
    older `dst` first."""
    _write_new(dst, replace, lambda fd: copy_range(src, fd, offset, size))


def write_new_text(dst: Path, data: bytes, *, replace: bool) -> None:
    _write_new(dst, replace, lambda fd: write_all(fd, data))


def _write_new(dst: Path, replace: bool, fill) -> None:
    if replace:
        _unlink(dst)
    fd = None
    try:
        fd = os.open(dst, _NEW, 0o666)
        fill(fd)
    except BaseException as exc:
        if fd is not None:
            _unlink(dst)  # no partial file under the final name
        name_failed_write(exc, dst)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def link_same(source: Path, dst: Path, size: int, sha256: str, *, trusted: bool = False,
              replace: bool = False) -> bool:
    """Hard-link `source` to `dst` when it holds exactly these bytes and shares the file system.
    `trusted`: `source` belongs to a finished export of the same build, so its size is enough
    (else its sha256 is checked: a file edited since would otherwise spread)."""
    if not in_place(source, size) or (not trusted and _file_sha256(source) != sha256):
        return False
    if replace:
        _unlink(dst)
    try:
        os.link(source, dst)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False  # another file system (or links refused): the caller copies instead
        raise
    return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> bool:
    """Write `text` (atomically: the few metadata files of an export) unless the file already
    holds it; True when written."""
    data = text.encode()
    if in_place(path, len(data)) and path.read_bytes() == data:
        return False
    write_atomic(path, data)
    return True
