"""Per-tar member indexes in the form the Hub's danbooru mirrors publish (deepghs/hfutils,
cheesechaser), so a source indexed once — by kdata or by the Hub — is never read through again:

    data-0001.tar   →   data-0001.json
    {"filesize": 9876543, "hash": "<git blob sha1>", "hash_lfs": "<sha256>",
     "files": {"1001.jpg": {"offset": 1536, "size": 48213, "sha256": "…"}, …}}

`hash` is git's object id of the file (sha1 of `blob <size>\\0` + the bytes: what the Hub shows
for a file), `hash_lfs` the sha256 of the file (its LFS oid), `offset` where a member's *data*
starts (past its header). Only regular members are listed, as hfutils does.

Building an index streams the tar once, front to back, in large blocks (one sequential read is
far faster over a network than a ranged request per member header), hashing as it goes. That
is for tars behind a URL; a tar on a local disk is read from its headers alone (`walk_headers`:
~40 ms for a 280 MB tar, where hashing it all takes ~1.5 s), and an index beside it is used
when there is one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kohaku_data import storage

Member = tuple[str, int, int]  # name, offset of the data, size
_log = logging.getLogger(__name__)


@dataclass
class TarScan:
    """What one pass over a tar found: the regular members, what was refused, and the index
    (None when the tar is damaged or holds links: such a tar is scanned again next time, so its
    refusals are reported again)."""

    members: list[Member] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (member, reason, detail)
    index: dict[str, Any] | None = None


def index_path(tar: storage.Target) -> storage.Target:
    """`…/data-0001.tar` → `…/data-0001.json` (the name hfutils gives it)."""
    name = storage.name_of(tar)
    stem = name[:-4] if name.lower().endswith(".tar") else name
    return storage.join(storage.parent_of(tar), f"{stem}.json")


def load_index(tar: storage.Target, tar_size: int) -> dict[str, Any] | None:
    """The index beside `tar` if there is one that fits this very tar, else None (see `fitting_index`)."""
    return fitting_index(index_path(tar), tar, tar_size)


def fitting_index(where: storage.Target, tar: storage.Target, tar_size: int) -> dict[str, Any] | None:
    """The hfutils index stored at `where` if it fits `tar`, else None; one that exists but does
    not fit (damaged, or made for another file) is logged as a warning and ignored.

    Fits: its `filesize` is the tar's size, every member lies inside the tar, and its hashes equal
    those the store reports for the tar without reading it (the Hub: `hash_lfs` is the LFS
    sha256, `hash` the git blob id). Stores that report no content hash (a disk, S3) are trusted
    on the size; every member kdata reads is still checked against the post's md5, so a tar
    replaced in place by another of the same size gives rejects, not wrong images."""
    try:
        index = json.loads(storage.read_bytes(where))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except (ValueError, UnicodeDecodeError, OSError, storage.StorageError) as exc:
        _log.warning("ignoring the index %s of %s: it cannot be read (%s)", storage.display(where), storage.display(tar), exc)
        return None
    problem = misfit(index, tar, tar_size)
    if problem:
        _log.warning("ignoring the index %s: it does not fit %s (%s); the tar is indexed from its own bytes",
                     storage.display(where), storage.display(tar), problem)
        return None
    return index


def misfit(index: Any, tar: storage.Target, tar_size: int) -> str:
    """Why `index` is not the index of `tar` (size `tar_size`), or "" when it is."""
    if not isinstance(index, dict) or not isinstance(index.get("files"), dict):
        return "not an hfutils index: no 'files' object"
    if index.get("filesize") != tar_size:
        return f"filesize {index.get('filesize')!r}, the tar has {tar_size} bytes"
    for name, meta in index["files"].items():
        if not _member_fits(meta, tar_size):
            return f"member {name!r} has no valid offset/size inside the tar"
    reported = reported_hashes(tar)
    for key in ("hash_lfs", "hash"):
        if reported.get(key) and index.get(key) and reported[key] != index[key]:
            return f"{key} {index[key]}, the store reports {reported[key]}"
    return ""


def _member_fits(meta: Any, tar_size: int) -> bool:
    if not isinstance(meta, dict):
        return False
    offset, size = meta.get("offset"), meta.get("size")
    return (type(offset) is int and type(size) is int and offset >= 0 and size >= 0
            and offset + size <= tar_size)


def cached_index_path(tar: storage.Target) -> Path:
    """Where kdata keeps the index it built of a tar it must not write beside (a read-only
    remote such as `hf://`): this user's cache, named after the tar's URL."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdata" / "tar-index"
    return cache / (hashlib.sha256(storage.display(tar).encode()).hexdigest()[:32] + ".json")


def members_of(index: dict[str, Any]) -> list[Member]:
    return [(name, int(m["offset"]), int(m["size"])) for name, m in index["files"].items()]


def git_blob_hasher(size: int) -> "hashlib._Hash":
    """A sha1 fed `blob <size>\\0` already: fed the file's `size` bytes it gives git's object id,
    the `hash` of the hfutils form."""
    return hashlib.sha1(f"blob {size}\0".encode())


def hfutils_index(filesize: int, sha1: str, sha256: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The hfutils index of a tar: a source's (read) and a built shard's (written) alike."""
    return {"filesize": filesize, "hash": sha1, "hash_lfs": sha256, "files": files}


def scan_tar(tar: storage.Target, tar_size: int) -> TarScan:
    """Stream `tar` once: its regular members (with sha256), refusals, and its index."""
    scan = TarScan()
    sha1 = git_blob_hasher(tar_size)
    sha256 = hashlib.sha256()
    files: dict[str, dict[str, Any]] = {}
    clean = True
    with storage.open_read(tar) as raw:
        reader = _HashingReader(raw, (sha1, sha256))
        try:
            clean = _walk(tarfile.open(fileobj=reader, mode="r|"), tar_size, scan, files)
        except (tarfile.TarError, EOFError) as exc:
            scan.refused.append(("", "corrupt_tar", str(exc)))
            clean = False
        reader.drain()
    if clean and reader.total == tar_size:
        scan.index = hfutils_index(tar_size, sha1.hexdigest(), sha256.hexdigest(), files)
    return scan


def walk_headers(tar: Path, tar_size: int) -> TarScan:
    """The members of a tar on this disk from its headers alone (a seek per member, no data
    read: on a local disk this beats hashing the whole tar, so no index is written for it)."""
    scan = TarScan()
    try:
        with tarfile.open(tar, "r:") as archive:
            _walk(archive, tar_size, scan, None)
    except (tarfile.TarError, OSError) as exc:
        scan.refused.append(("", "corrupt_tar", str(exc)))
    return scan


def index_bytes(index: dict[str, Any]) -> bytes:
    """Compact JSON with members in tar order (as hfutils writes it)."""
    return json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode()


def _walk(tar: tarfile.TarFile, tar_size: int, scan: TarScan, files: dict[str, dict[str, Any]] | None) -> bool:
    """Members one by one; those read before a damaged header or a cut-off member are kept.
    `files`: where to put each member's index entry (its data is read and hashed), or None to
    read headers only. Returns whether the tar was clean (only directories and regular files,
    all whole)."""
    clean = True
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            scan.refused.append(("", "corrupt_tar", f"unreadable header after the members kept: {exc}"))
            return False
        if member is None:
            return clean
        if member.isdir():
            continue
        if member.issym() or member.islnk():
            scan.refused.append((member.name, "tar_link", f"link to {member.linkname!r} refused"))
            clean = False
        elif not member.isreg():
            scan.refused.append((member.name, "corrupt_tar_member", "not a regular file"))
            clean = False
        elif member.offset_data + member.size > tar_size or (files is not None and not _hash_member(tar, member, files)):
            scan.refused.append((member.name, "corrupt_tar_member", "data runs past the end of the tar"))
            return False
        else:
            scan.members.append((member.name, member.offset_data, member.size))


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, files: dict[str, dict[str, Any]]) -> bool:
    digest = hashlib.sha256()
    left = member.size
    try:
        f = tar.extractfile(member)
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                return False
            digest.update(block)
            left -= len(block)
    except (tarfile.TarError, OSError, EOFError):
        return False
    files[member.name] = {"offset": member.offset_data, "size": member.size, "sha256": digest.hexdigest()}
    return True


def reported_hashes(tar: storage.Target) -> dict[str, str]:
    """The hashes a store reports for `tar` without reading it, in the index's terms: the Hub
    gives `hash_lfs` (LFS sha256) and `hash` (git blob id); a disk or S3 gives none."""
    if not storage.is_remote(tar):
        return {}
    try:
        meta = storage.info(tar)
    except (OSError, storage.StorageError):
        return {}
    out = {}
    lfs = meta.get("lfs")
    if isinstance(lfs, dict) and isinstance(lfs.get("sha256"), str):
        out["hash_lfs"] = lfs["sha256"]
    elif isinstance(meta.get("blob_id"), str):  # an LFS file's blob id is its pointer's, not its bytes'
        out["hash"] = meta["blob_id"]
    return out


class _HashingReader:
    """A read-only file object that hashes every byte that passes through it."""

    def __init__(self, raw: IO[bytes], digests) -> None:
        self._raw, self._digests = raw, digests
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        for digest in self._digests:
            digest.update(data)
        self.total += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) what the tar reader left: the end blocks and record padding."""
        while self.read(1 << 22):
            pass
