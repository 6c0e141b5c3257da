"""Deterministic webdataset tar shards.

Every member header is fixed (USTAR, mtime 0, uid/gid 0, empty owner names, mode 0o644), so
the bytes of a shard depend only on its members' names and contents: the same samples give the
same shard on any machine, for any worker count. A shard is written to `NAME.tar.tmp` and
renamed into place, so a finished shard file is always complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
# The tar end: two zero blocks, then padding of the whole archive to tarfile's RECORDSIZE.
_RECORD = tarfile.RECORDSIZE


def member_bytes(size: int) -> int:
    """Bytes one member takes in a USTAR tar: header block plus data padded to a block."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def tar_size(content_bytes: int) -> int:
    """Final file size of a tar whose members take `content_bytes` (end blocks and record padding)."""
    total = content_bytes + 2 * BLOCK
    return -(-total // _RECORD) * _RECORD


def fixed_tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


@dataclass(frozen=True)
class ShardInfo:
    url: str  # file name, relative to the dataset folder
    nsamples: int
    filesize: int
    sha256: str


class ShardWriter:
    """Writes one shard: `add(name, data)` members, then `commit()` renames it into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._hash = hashlib.sha256()
        self._tar = tarfile.open(fileobj=_HashingWriter(self._file, self._hash), mode="w",
                                 format=tarfile.USTAR_FORMAT)
        self.nsamples = 0
        self.content_bytes = 0

    def add(self, name: str, data: bytes) -> None:
        self._tar.addfile(fixed_tarinfo(name, len(data)), io.BytesIO(data))
        self.content_bytes += member_bytes(len(data))

    def add_sample(self, members: list[tuple[str, bytes]]) -> None:
        for name, data in members:
            self.add(name, data)
        self.nsamples += 1

    def commit(self) -> ShardInfo:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return ShardInfo(self.path.name, self.nsamples, self.path.stat().st_size, self._hash.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class _HashingWriter:
    """A write-only file object that hashes what passes through (no second read of the shard)."""

    def __init__(self, file: io.BufferedWriter, digest) -> None:
        self._file, self._digest = file, digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"
