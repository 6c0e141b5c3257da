"""Deterministic webdataset tar shards.

Every member header is fixed (USTAR, mtime 0, uid/gid 0, empty owner names, mode 0o644), so
the bytes of a shard depend only on its members' names and contents: the same samples give the
same shard on any machine, for any worker count. A shard is written to a temporary name of its
own (`.NAME.tar.PID.RANDOM.tmp`, removed by the builder if a writer is killed) and renamed into
place, so a finished shard file is always complete, even when two writers race on one shard.

Beside each shard `NAME-000000.tar` lies its member index `NAME-000000.json` in the form of
deepghs/hfutils (`hfutils.index`): `filesize`, `hash` (git's blob sha1, what the Hub shows),
`hash_lfs` (sha256 of the file, the LFS oid) and `files` {member name: `offset` (of the member's
data, past its header), `size`, `sha256`}. With it (or the manifest's `*_offset` / `*_size`
columns) a reader fetches one sample by byte range, locally or from object storage, without
scanning the tar. Each image's entry also carries `width`, `height` (the stored image),
`aspect` (width / height) and `caption` (the .txt caption, keep separator removed), and the
index `includes_image_geometry: true`: what bghira/webshart (SimpleTuner's `webshart` backend)
reads to bucket and caption samples without opening an image; hfutils readers ignore them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kohaku_data.atomic import name_failed_write
from kohaku_data.tar_index import git_blob_hasher, hfutils_index

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
    """One `index.json` shardlist entry (the wids form; wids checks `md5sum`)."""

    url: str  # file name, relative to the dataset folder
    nsamples: int
    filesize: int
    sha256: str
    md5sum: str


# name -> (offset of the member's data in the tar, size): where one sample's members lie.
Placement = dict[str, tuple[int, int]]


class TarStream:
    """One deterministic tar written into an open binary file, hashed as it goes (sha256, md5,
    and git's blob sha1 when the final `size` is known in advance — the layout knows it — so a
    shard on its way to object storage is never read back).

    `add(name, data)` members, `add_sample(members)`, then `close()`."""

    def __init__(self, file: IO[bytes], size: int | None = None) -> None:
        self._hash, self._md5 = hashlib.sha256(), hashlib.md5()
        self._sha1 = git_blob_hasher(size) if size is not None else None
        digests = (self._hash, self._md5) + ((self._sha1,) if self._sha1 is not None else ())
        self._tar = tarfile.open(fileobj=_HashingWriter(file, digests), mode="w", format=tarfile.USTAR_FORMAT)
        self.nsamples = 0
        self.content_bytes = 0
        self.files: dict[str, dict[str, Any]] = {}  # the member index's `files`

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        """Append one member; returns (offset of its data in the tar, size)."""
        start = self._tar.offset
        self._tar.addfile(fixed_tarinfo(name, len(data)), io.BytesIO(data))
        # What addfile wrote: header block(s), then the data padded to a block.
        offset = self._tar.offset - -(-len(data) // BLOCK) * BLOCK
        self.files[name] = {"offset": offset, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.content_bytes += self._tar.offset - start
        return offset, len(data)

    def add_sample(self, members: list[tuple[str, bytes]]) -> Placement:
        placement = {name: self.add(name, data) for name, data in members}
        self.nsamples += 1
        annotate_sample(self.files, dict(members))
        return placement

    def close(self) -> None:
        self._tar.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def git_sha1(self) -> str | None:
        """git's blob sha1, right only when the tar came out at the size given at the start."""
        return self._sha1.hexdigest() if self._sha1 is not None else None


class ShardWriter:
    """Writes one shard to a local path: `add(name, data)` members, then `commit()` renames it
    into place and writes its member index beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A name of its own (as atomic.replacing makes): a resubmitted task may briefly write the
        # same shard beside its cancelled twin; each renames its own complete file.
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        self._file = open(self.tmp, "wb")
        self._stream = TarStream(self._file)

    @property
    def nsamples(self) -> int:
        return self._stream.nsamples

    @property
    def content_bytes(self) -> int:
        return self._stream.content_bytes

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self._stream.files

    def add(self, name: str, data: bytes) -> tuple[int, int]:
        """Append one member; returns (offset of its data in the tar, size)."""
        try:
            return self._stream.add(name, data)
        except OSError as exc:
            name_failed_write(exc, self.path)
            raise

    def add_sample(self, members: list[tuple[str, bytes]]) -> Placement:
        try:
            return self._stream.add_sample(members)
        except OSError as exc:
            name_failed_write(exc, self.path)
            raise

    def commit(self) -> ShardInfo:
        self._stream.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        filesize = self.path.stat().st_size
        _write_beside(member_index_path(self.path), member_index_bytes(
            member_index(filesize, git_blob_sha1(self.path), self._stream.sha256, self.files)))
        return ShardInfo(self.path.name, self.nsamples, filesize, self._stream.sha256, self._stream.md5)

    def abort(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


class _HashingWriter:
    """A write-only file object that hashes what passes through (no second read of the shard)."""

    def __init__(self, file: io.BufferedWriter, digests) -> None:
        self._file, self._digests = file, digests

    def write(self, data: bytes) -> int:
        for digest in self._digests:
            digest.update(data)
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


# -- member index (hfutils form) -----------------------------------------------------------------
def member_index_path(tar: Path) -> Path:
    """`NAME-000000.tar` → `NAME-000000.json` (hfutils puts the index beside the tar so)."""
    return tar.with_suffix(".json")


def member_index_name(tar_name: str) -> str:
    return tar_name.removesuffix(".tar") + ".json"


def member_index(filesize: int, sha1: str, sha256: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A shard's member index: the hfutils form (tar_index.py), plus webshart's geometry flag."""
    index = hfutils_index(filesize, sha1, sha256, files)
    if any("width" in entry for entry in files.values()):
        index["includes_image_geometry"] = True
    return index


_SIDECARS = (".txt", ".json")
KEEP_SEPARATOR = "|||"  # the caption config's default keep separator (captions/ is a layer above)


def sample_fields(json_member: bytes, txt_member: bytes) -> dict[str, Any]:
    """webshart's per-image fields from a sample's .json (`bucket`: [w, h] of the stored image)
    and .txt members: bucketing and captions without reading the image."""
    width, height = (int(v) for v in json.loads(json_member)["bucket"])
    caption = txt_member.decode("utf-8").replace(KEEP_SEPARATOR, "").strip()
    return {"width": width, "height": height, "aspect": round(width / height, 6), "caption": caption}


def annotate_sample(files: dict[str, dict[str, Any]], members: dict[str, bytes]) -> None:
    """Add `sample_fields` to the image entry of one sample whose members are `members`
    (name -> bytes); a sample without exactly one image, a .txt and a .json is left as it is."""
    images = [n for n in members if not n.endswith(_SIDECARS)]
    if len(images) > 1:  # `[image] levels`: the main image `<id>.<ext>`, not `<id>.<level>.<ext>`
        images = [n for n in images if n.count(".") == 1]
    if len(images) != 1:
        return
    stem = images[0].rsplit(".", 1)[0]
    txt, meta = members.get(f"{stem}.txt"), members.get(f"{stem}.json")
    if txt is None or meta is None:
        return
    try:
        files[images[0]].update(sample_fields(meta, txt))
    except (ValueError, KeyError, TypeError):  # not kdata's sample json: an hfutils entry only
        return


def _write_beside(path: Path, data: bytes) -> None:
    """Atomic and durable, through `NAME.json.tmp` like the shard's own `NAME.tar.tmp`: a build
    killed mid-write leaves a temp name the builder knows and removes (not a random one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            name_failed_write(exc, path)
            raise
    os.replace(tmp, path)


def member_index_bytes(index: dict[str, Any]) -> bytes:
    # Compact (one line, ~100 bytes a member) with sorted keys: the same shard, the same bytes.
    return json.dumps(index, sort_keys=True, separators=(",", ":")).encode()


def git_blob_sha1(path: Path, chunk: int = 1 << 22) -> str:
    """sha1 of `blob <size>\\0` + the file: git's object id, the `hash` hfutils records.

    The size comes first, so this needs a second read of the finished file (from the page cache,
    right after writing it; the image stage dwarfs it)."""
    digest = git_blob_hasher(path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_member_index(tar: Path) -> dict[str, Any]:
    return json.loads(member_index_path(tar).read_bytes())


def tar_member_index(tar: Path, chunk: int = 1 << 22) -> dict[str, Any]:
    """The member index as read back from the tar itself (what `kdata verify` compares with).

    The headers come from tarfile (it seeks past the data); the three file digests and every
    member's sha256 from ONE sequential read of the file, each block fed to the digests of the
    members it overlaps: a 1 TB dataset is read once here, not twice."""
    with tarfile.open(tar, "r:") as archive:
        members = [(m.name, m.offset_data, m.size) for m in archive if m.isreg()]
    size = tar.stat().st_size
    sha1, sha256, md5 = git_blob_hasher(size), hashlib.sha256(), hashlib.md5()
    digests = [hashlib.sha256() for _ in members]
    order = sorted(range(len(members)), key=lambda i: members[i][1])
    first = 0  # members before this one in `order` end before the current block
    with open(tar, "rb") as raw:
        pos = 0
        while block := raw.read(chunk):
            for digest in (sha1, sha256, md5):
                digest.update(block)
            end = pos + len(block)
            i = first
            while i < len(order) and members[order[i]][1] < end:
                _, start, length = members[order[i]]
                lo, hi = max(start, pos), min(start + length, end)
                if lo < hi:
                    digests[order[i]].update(block[lo - pos:hi - pos])
                if start + length <= end and i == first:
                    first += 1
                i += 1
            pos = end
    files = {name: {"offset": offset, "size": length, "sha256": digest.hexdigest()}
             for (name, offset, length), digest in zip(members, digests)}
    _annotate_from_tar(tar, files)
    index = member_index(size, sha1.hexdigest(), sha256.hexdigest(), files)
    index["md5sum"] = md5.hexdigest()
    return index


def _annotate_from_tar(tar: Path, files: dict[str, dict[str, Any]]) -> None:
    """`annotate_sample` for every sample of a tar, reading only its .txt and .json members."""
    samples: dict[str, list[str]] = {}
    for name in files:
        samples.setdefault(name.rsplit(".", 1)[0], []).append(name)
    with open(tar, "rb") as f:
        for names in samples.values():
            members = {n: b"" for n in names}
            for n in names:
                if n.endswith(_SIDECARS):
                    f.seek(files[n]["offset"])
                    members[n] = f.read(files[n]["size"])
            annotate_sample(files, members)


def shard_file_problems(out: Path, entry: dict[str, Any], rows) -> list[str]:
    """Do the shard's md5sum (index.json), member index and the manifest's member offsets agree
    with the tar? `rows`: the shard's manifest rows (polars frame). [] when all agree."""
    tar = out / entry["url"]
    name = entry["url"]
    try:
        actual = tar_member_index(tar)
    except (tarfile.TarError, OSError) as exc:
        return [f"{name}: unreadable tar ({exc})"]
    problems = []
    if entry.get("md5sum") != actual.pop("md5sum"):
        problems.append(f"{name}: md5sum differs from index.json (or index.json has none: rebuild)")
    try:
        recorded = read_member_index(tar)
    except (OSError, ValueError):
        problems.append(f"{name}: member index {member_index_path(tar).name} is missing or unreadable")
    else:
        problems += member_index_problems(name, member_index_path(tar).name, recorded, actual, rows)
    problems += _offset_problems(name, actual["files"], rows)
    return problems


_HFUTILS_KEYS = ("filesize", "hash", "hash_lfs")
_MEMBER_KEYS = ("offset", "size", "sha256")
WEBSHART_FIELDS = ("width", "height", "aspect", "caption")


def member_index_problems(name: str, index_name: str, recorded: Any, actual: dict[str, Any], rows) -> list[str]:
    """Does the recorded member index fit the tar (`actual`, from `tar_member_index`)?

    The hfutils part (`filesize`, `hash`, `hash_lfs`, and every member's `offset`, `size`,
    `sha256`, no member more or less) must be equal. webshart's fields came later: a build made
    before them has none and is fine; where an entry has one, it must equal what the manifest
    row of that image gives (`width`, `height`, `aspect` = round(w / h, 6), `caption` without the
    keep separator), and `includes_image_geometry` must be there exactly when some entry has a
    width. Keys neither form knows are not checked (a later kdata may add some)."""
    bad = f"{name}: member index {index_name}"
    if not isinstance(recorded, dict) or not isinstance(recorded.get("files"), dict):
        return [f"{bad} is not an hfutils index (no 'files')"]
    problems = [f"{bad} says {key} {recorded.get(key)!r}, the tar gives {actual[key]!r}"
                for key in _HFUTILS_KEYS if recorded.get(key) != actual[key]]
    files, found = recorded["files"], actual["files"]
    for member in sorted(files.keys() - found.keys()):
        problems.append(f"{bad} lists {member}, which the tar does not hold")
    for member in sorted(found.keys() - files.keys()):
        problems.append(f"{bad} does not list {member}")
    for member in sorted(files.keys() & found.keys()):
        entry = files[member] if isinstance(files[member], dict) else {}
        differ = [k for k in _MEMBER_KEYS if entry.get(k) != found[member][k]]
        if differ:
            problems.append(f"{bad}: {'/'.join(differ)} of {member} do not match the tar")
    expected = {row["image"]: manifest_fields(row) for row in rows.iter_rows(named=True)
                if row.get("width") is not None and row.get("height") is not None}
    geometry = False
    for member, entry in sorted(files.items()):
        present = [k for k in WEBSHART_FIELDS if isinstance(entry, dict) and k in entry]
        geometry = geometry or "width" in present
        if not present:
            continue
        want = expected.get(member)
        if want is None:
            problems.append(f"{bad}: {member} has webshart fields but no manifest row with a size")
            continue
        differ = [k for k in present if entry[k] != want[k]]
        if differ:
            shown = ", ".join(f"{k} {entry[k]!r} (manifest: {want[k]!r})" for k in differ)
            problems.append(f"{bad}: {member} {shown}")
    flag = recorded.get("includes_image_geometry")
    if flag not in (None, True) or (flag is True) != geometry:
        problems.append(f"{bad}: includes_image_geometry is {flag!r} but "
                        f"{'some' if geometry else 'no'} entry has a width")
    return problems


def manifest_fields(row: dict[str, Any]) -> dict[str, Any]:
    """webshart's fields of an image as its manifest row gives them (`sample_fields` from the row)."""
    width, height = int(row["width"]), int(row["height"])
    caption = (row.get("caption") or "").replace(KEEP_SEPARATOR, "").strip()
    return {"width": width, "height": height, "aspect": round(width / height, 6), "caption": caption}


def _offset_problems(name: str, files: dict[str, dict[str, Any]], rows) -> list[str]:
    problems = []
    needed = [f"{m}_{k}" for m in ("image", "txt", "json") for k in ("offset", "size")]
    if any(col not in rows.columns for col in needed):
        return [f"{name}: the manifest has no member offset columns (built by an older kdata: rebuild)"]
    for row in rows.iter_rows(named=True):
        key = row["key"]
        for member, col in ((row["image"], "image"), (f"{key}.txt", "txt"), (f"{key}.json", "json")):
            found = files.get(member)
            if found is None or (found["offset"], found["size"]) != (row[f"{col}_offset"], row[f"{col}_size"]):
                problems.append(f"{name}: manifest offset/size of {member} do not match the tar")
    return problems
