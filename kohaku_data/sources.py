"""Where a post's image bytes live: a folder of `<id>.<ext>` files or danbooru2023 tars, on a disk
or behind an fsspec URL (`s3://bucket/danbooru2023/`).

    source = open_source("raw/")            # or "s3://bucket/danbooru2023/"
    source.files                            # one row per post id, sorted: key, container, member, offset, size
    for entry in source.entries():          # the same as plain objects (small sources, tests)
        data = read_entry(entry)            # works in any process: entries are plain data
    source.rejects                          # what was refused, with a reason

The index is columnar (polars): ~44 bytes a file, where one Python object per file took ~350.
Tars are never unpacked: a tar's members come from its hfutils-form index beside it
(`data-0001.json`, the form the Hub's danbooru mirrors publish) when that index fits the tar;
else, behind a URL, from one streamed pass that also writes that index for next time, and on a
local disk from the member headers (see `tar_index`).
Members are read by byte range. Members whose names would leave the tree, links and other
non-regular members are refused. Files under an `updates/` folder win over older copies.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import polars as pl

from kohaku_data import storage, tar_index
from kohaku_data.errors import KdataError

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "jfif", "png", "webp", "avif", "gif", "bmp", "tif", "tiff"}
)
UPDATES_DIR = "updates"
# One row per file. `container` numbers `Source.containers` (a tar, or the plain file itself);
# `member` is the tar member name (null for a plain file); `offset` where its bytes start.
FILES_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Int64, "container": pl.UInt32, "member": pl.String, "offset": pl.Int64, "size": pl.Int64,
}
_INDEX_THREADS = 8  # tars indexed at once (network- and hash-bound; hashlib releases the GIL)
_FINGERPRINT_CHUNK = 1 << 20
_log = logging.getLogger(__name__)


class SourceError(KdataError):
    """A source folder or file cannot be read."""


@dataclass(frozen=True, order=True, slots=True)
class SourceEntry:
    """One image file: its post id and how to read its bytes (picklable, no open handles)."""

    key: int
    name: str  # display name relative to the source root, e.g. "data-0001.tar:1001.jpg"
    ext: str  # lower case, no dot
    size: int
    path: str  # the file itself, or the tar that holds it (a local path or a URL)
    member: str | None = None  # tar member name
    offset: int | None = None  # byte offset of the member's data in the tar


@dataclass(frozen=True)
class SourceReject:
    name: str
    reason: str  # unsafe_member_name | tar_link | corrupt_tar | corrupt_tar_member |
    #              not_a_post_id | unsupported_extension | duplicate_key
    detail: str = ""


@dataclass
class Source:
    root: str  # as given: a local path or a URL
    files: pl.DataFrame  # FILES_SCHEMA, sorted by key, one row per key
    containers: list[str]  # path of each container relative to root ("" when root is the file)
    rejects: list[SourceReject] = field(default_factory=list)

    def __len__(self) -> int:
        return self.files.height

    def shown_containers(self) -> list[str]:
        """Container names as shown in entry names (a source that is one file shows its name)."""
        return [rel or storage.name_of(self.root) for rel in self.containers]

    def container_path(self, index: int) -> str:
        rel = self.containers[index]
        return str(storage.join(self.root, rel)) if rel else self.root

    def entries(self) -> list[SourceEntry]:
        """Every file as a `SourceEntry` (one object each: for small sources and tests)."""
        return entries_of(self, self.files)

    def fingerprint(self) -> str:
        """sha256 of the kept input list (names and sizes): changes when the inputs change."""
        digest = hashlib.sha256()
        for start in range(0, self.files.height, _FINGERPRINT_CHUNK):
            lines = self._names(self.files.slice(start, _FINGERPRINT_CHUNK)).select(
                pl.format("{}\t{}\t{}\n", "key", "name", "size"))
            digest.update("".join(lines.to_series()).encode())
        return digest.hexdigest()

    def _names(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with its display name (`rel:member` for tar members, `rel` for files)."""
        rel = pl.Series(self.shown_containers(), dtype=pl.String)
        return frame.with_columns(rel=rel.gather(frame["container"])).with_columns(
            name=pl.when(pl.col("member").is_null()).then(pl.col("rel"))
            .otherwise(pl.concat_str("rel", pl.lit(":"), "member")))


def entries_of(source: Source, frame: pl.DataFrame) -> list[SourceEntry]:
    """`SourceEntry` objects for some rows of `source.files` (e.g. one task's slice)."""
    # only the containers of these rows (a folder of plain files has one container per file)
    used = frame["container"].unique().to_list()
    paths = {c: source.container_path(c) for c in used}
    shown = {c: source.containers[c] or storage.name_of(source.root) for c in used}
    out = []
    for key, container, member, offset, size in frame.select(list(FILES_SCHEMA)).iter_rows():
        rel = shown[container]
        if member is None:
            out.append(SourceEntry(key, rel, _ext(rel), size, paths[container]))
        else:
            out.append(SourceEntry(key, f"{rel}:{member}", _ext(member), size, paths[container], member, offset))
    return out


def open_source(path: storage.Target) -> Source:
    """Index a folder (recursively; plain files and `.tar` files) or a single tar."""
    root = str(path)
    if not storage.exists(root):
        raise SourceError(f"source {root} does not exist: pass a folder of <id>.<ext> files or tars")
    if storage.is_dir(root):
        listing = storage.list_files(root)
    else:
        listing = [("", storage.size(root))]
    builder = _Builder(root)
    tars = [(rel, size) for rel, size in listing if _is_tar(rel or root)]
    index_files = {_index_rel(rel) for rel, _ in tars}
    for rel, size in listing:
        if not _is_tar(rel or root) and rel not in index_files:
            builder.add_file(rel, size)
    for rel, scan in zip([rel for rel, _ in tars], _scan_all(root, tars)):
        builder.add_tar(rel, scan)
    return builder.finish()


def read_entry(entry: SourceEntry) -> bytes:
    """The bytes of one entry (one ranged read). Raises SourceError when the file changed or
    was cut short."""
    try:
        data = storage.read_range(entry.path, entry.offset or 0, entry.size)
    except (OSError, storage.StorageError) as exc:
        raise SourceError(f"cannot read {entry.name}: {exc}") from exc
    if len(data) != entry.size:
        raise SourceError(f"{entry.name}: expected {entry.size} bytes, read {len(data)} (file changed or cut short)")
    return data


# -- scanning --------------------------------------------------------------------------------
def _is_tar(name: str) -> bool:
    return name.lower().endswith(".tar")


def _index_rel(tar_rel: str) -> str:
    return (tar_rel[:-4] + ".json") if tar_rel else ""


def _ext(name: str) -> str:
    return PurePosixPath(name).name.partition(".")[2].lower()


def _scan_all(root: str, tars: list[tuple[str, int]]) -> list[tar_index.TarScan]:
    """Members of every tar, in listing order (tars are indexed in parallel threads)."""
    if not tars:
        return []
    with ThreadPoolExecutor(min(_INDEX_THREADS, len(tars))) as pool:
        return list(pool.map(lambda t: _scan_one(root, *t), tars))


def _scan_one(root: str, rel: str, size: int) -> tar_index.TarScan:
    tar = str(storage.join(root, rel)) if rel else root
    index = tar_index.load_index(tar, size)
    if index is not None:
        return tar_index.TarScan(tar_index.members_of(index))
    local = storage.local_path(tar)
    if local is not None:
        return tar_index.walk_headers(local, size)
    try:
        scan = tar_index.scan_tar(tar, size)
    except (OSError, storage.StorageError) as exc:
        return tar_index.TarScan(refused=[("", "corrupt_tar", str(exc))])
    if scan.index is not None:
        _write_index(tar, scan.index)
    return scan


def _write_index(tar: str, index: dict) -> None:
    """Keep the index beside the tar for the next run; a read-only source only costs that."""
    try:
        storage.commit_bytes(tar_index.index_path(tar), tar_index.index_bytes(index), durable=False)
    except (OSError, storage.StorageError) as exc:
        _log.warning("could not write the index of %s (%s); it is indexed again next time", tar, exc)


class _Builder:
    """Collects candidate files (plain files and tar members) as columns, then picks winners."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.containers: list[str] = []
        self.frames: list[pl.DataFrame] = []
        self.plain: list[tuple[int, int]] = []  # (container, size) of each plain file
        self.rejects: list[SourceReject] = []

    def add_file(self, rel: str, size: int) -> None:
        self.plain.append((len(self.containers), size))
        self.containers.append(rel)

    def add_tar(self, rel: str, scan: tar_index.TarScan) -> None:
        shown = rel or storage.name_of(self.root)
        for member, reason, detail in scan.refused:
            self.rejects.append(SourceReject(f"{shown}:{member}" if member else shown, reason, detail))
        if not scan.members:
            return
        self.containers.append(rel)
        names, offsets, sizes = zip(*scan.members)
        self.frames.append(pl.DataFrame(
            {"container": pl.Series([len(self.containers) - 1] * len(names), dtype=pl.UInt32),
             "member": pl.Series(names, dtype=pl.String), "offset": pl.Series(offsets, dtype=pl.Int64),
             "size": pl.Series(sizes, dtype=pl.Int64)}))

    def finish(self) -> Source:
        schema = {k: v for k, v in FILES_SCHEMA.items() if k != "key"}
        if self.plain:
            containers, sizes = zip(*self.plain)
            self.frames.append(pl.DataFrame(
                {"container": containers, "member": [None] * len(sizes), "offset": [0] * len(sizes), "size": sizes},
                schema=schema))
        frame = pl.concat(self.frames, rechunk=True) if self.frames else pl.DataFrame(schema=schema)
        source = Source(self.root, pl.DataFrame(schema=FILES_SCHEMA), self.containers, self.rejects)
        source.files = _pick_winners(source, _classify(source, frame))
        return source


def _classify(source: Source, frame: pl.DataFrame) -> pl.DataFrame:
    """Name checks on every candidate at once; refusals go to `source.rejects`, the rest keep
    their post id (`key`). Display names are made only for the refused rows: at 7.8M members a
    full `rel:member` column would be the largest thing built."""
    shown = pl.Series(source.shown_containers(), dtype=pl.String)
    plain = frame.filter(pl.col("member").is_null())
    named = pl.concat([
        frame.filter(pl.col("member").is_not_null()).with_columns(_name=pl.col("member")),
        plain.with_columns(_name=shown.gather(plain["container"])),
    ])
    base = pl.col("_name").str.replace(r"^.*/", "")
    stem = base.str.extract(r"^([^.]*)")
    ext = base.str.extract(r"^[^.]*\.(.*)$").str.to_lowercase().fill_null("")
    member = pl.col("member")
    unsafe = member.is_not_null() & (
        member.str.contains(r"^[/\\]") | member.str.contains("\\", literal=True) | (member == "")
        | member.str.contains(r"^[^/]*:") | member.str.contains(r"(^|/)\.\.(/|$)"))
    checked = named.with_columns(
        _ext=ext, _key=pl.when(stem.str.contains(r"^[0-9]+$")).then(stem.str.to_integer(strict=False)),
    ).with_columns(
        _reason=pl.when(unsafe).then(pl.lit("unsafe_member_name"))
        .when(~pl.col("_ext").is_in(sorted(IMAGE_EXTENSIONS))).then(pl.lit("unsupported_extension"))
        .when(pl.col("_key").is_null()).then(pl.lit("not_a_post_id")),
    )
    refused = source._names(checked.filter(pl.col("_reason").is_not_null()))
    for display, reason, ext_value, is_member in refused.select(
            "name", "_reason", "_ext", pl.col("member").is_not_null()).iter_rows():
        source.rejects.append(SourceReject(display, reason, _detail(reason, ext_value, is_member)))
    return checked.filter(pl.col("_reason").is_null()).select(
        pl.col("_key").alias("key"), "container", "member", "offset", "size")


def _detail(reason: str, ext: str, is_member: bool) -> str:
    if reason == "unsafe_member_name":
        return "absolute or leaves the tree"
    if reason == "unsupported_extension":
        return f"extension {ext!r} is not an image type"
    return "member name must be <post id>.<ext>" if is_member else "file name must be <post id>.<ext>"


def _pick_winners(source: Source, candidates: pl.DataFrame) -> pl.DataFrame:
    """One row per key: an `updates/` copy beats the rest; otherwise the first by name. Only
    keys found more than once are compared (by name, in Python: there are few)."""
    updates = pl.Series([_in_updates(rel) for rel in source.containers], dtype=pl.Boolean)
    dup = candidates["key"].is_duplicated()
    single = candidates.filter(~dup)
    chosen = [single]
    if dup.any():
        dups = source._names(candidates.filter(dup))
        dups = dups.with_columns(_upd=updates.gather(dups["container"]), display=pl.col("name"))
        dups = dups.sort(["key", "_upd", "display"], descending=[False, True, False])
        keep = []
        last_key, winner_name, winner_upd = None, "", False
        for key, name, upd in dups.select("key", "display", "_upd").iter_rows():
            if key != last_key:
                last_key, winner_name, winner_upd = key, name, upd
                keep.append(True)
                continue
            keep.append(False)
            if not (winner_upd and not upd):  # an older copy replaced by an update: expected
                source.rejects.append(SourceReject(name, "duplicate_key", f"post {key} also in {winner_name}"))
        chosen.append(dups.filter(pl.Series(keep, dtype=pl.Boolean)).select(candidates.columns))
    return pl.concat(chosen).sort("key").select(list(FILES_SCHEMA)).rechunk()


def _in_updates(rel: str) -> bool:
    return UPDATES_DIR in PurePosixPath(rel).parts[:-1]
