"""Placing exported files: tar members copied out by offset, hard links, small texts; all atomic.

A member is copied with `os.copy_file_range` from the shard at the member's data offset: the
kernel moves the bytes (a file system that can share extents may even reflink them), nothing
passes through Python. Hard links need a file that already exists: `link_from` is an earlier
export (any format) whose `images/` holds the same member, checked by size and sha256 (by size
alone when that export is a finished one of the same build, per its `kdata-export.json`). A file
already in place with its size is skipped: every write goes to a temporary name first and is
renamed, so a file under its final name is complete (that is what makes a rerun resume).
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

from kohaku_data.atomic import replacing, write_atomic


def in_place(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def copy_member(tar: BinaryIO, offset: int, size: int, dst: Path) -> None:
    """The `size` bytes at `offset` of `tar` into a new file `dst` (atomically)."""
    with replacing(dst) as tmp, open(tmp, "xb") as f:
        _copy_range(tar.fileno(), f.fileno(), offset, size)


def _copy_range(src: int, dst: int, offset: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, offset + done)
            if n == 0:
                raise OSError(errno.EIO, "the shard ended before the member did")
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        os.lseek(dst, 0, os.SEEK_SET)
        os.ftruncate(dst, 0)
        os.write(dst, os.pread(src, size, offset))  # a file system without copy_file_range


def link_same(source: Path, dst: Path, size: int, sha256: str, *, trusted: bool = False) -> bool:
    """Hard-link `source` to `dst` when it holds exactly these bytes and shares the file system.
    `trusted`: `source` belongs to a finished export of the same build, so its size is enough
    (else its sha256 is checked: a file edited since would otherwise spread)."""
    if not in_place(source, size) or (not trusted and _file_sha256(source) != sha256):
        return False
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        os.link(source, tmp)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False  # another file system (or links refused): the caller copies instead
        raise
    os.replace(tmp, dst)
    return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: Path, text: str) -> bool:
    """Write `text` unless the file already holds it; True when written."""
    data = text.encode()
    if in_place(path, len(data)) and path.read_bytes() == data:
        return False
    write_atomic(path, data)
    return True
