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
non-regular members are refused. When a post id is found more than once, a non-empty file beats an
empty one, then a copy under an `updates/` folder wins (the newest date folder first), then the first
by name (`_winner_rank`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
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
# Stores kdata reads but never writes into (an index it builds goes to the local cache).
_READ_ONLY_PROTOCOLS = frozenset({"hf", "http", "https"})
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


class SourceRoot(str):
    """A `--src` value that also says where the hfutils indexes of its tars live (`--src-index`):
    `SourceRoot("hf://datasets/nyanko7/danbooru2023", "hf://datasets/deepghs/danbooru2023_index")`.
    It is a str (the source root), so it passes unchanged through every layer that takes a
    source path and reaches `open_source` with its index root."""

    index_root: str | None

    def __new__(cls, root: str, index_root: str | None = None) -> SourceRoot:
        self = super().__new__(cls, root)
        self.index_root = index_root
        return self

    def __reduce__(self):
        return SourceRoot, (str(self), self.index_root)


def source_root(src: str, index_root: str | None) -> str:
    """What the CLI passes on for `--src SRC [--src-index DIR]`."""
    return SourceRoot(src, index_root) if index_root else src


def open_source(path: storage.Target, index_root: storage.Target | None = None) -> Source:
    """Index a folder (recursively; plain files and `.tar` files) or a single tar.

    `index_root`: where the hfutils indexes of the tars live at the same relative paths
    (`original/data-0006.tar` → `INDEX_ROOT/original/data-0006.json`), as deepghs publishes
    them for nyanko7/danbooru2023; else taken from a `SourceRoot`. An index beside the tar is
    used too."""
    root = str(path)
    if index_root is None:
        index_root = getattr(path, "index_root", None)
    if not storage.exists(root):
        raise SourceError(f"source {root} does not exist: pass a folder of <id>.<ext> files or tars")
    if index_root is not None and not storage.exists(index_root):
        raise SourceError(f"index folder {index_root} does not exist: pass the folder (or URL) that holds the "
                          "tars' .json indexes at the same relative paths as under --src")
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
    index = None if index_root is None else str(index_root)
    for rel, scan in zip([rel for rel, _ in tars], _scan_all(root, tars, index)):
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


# Runs of members read with one request (`read_entries`): members of one tar at most RUN_GAP
# bytes apart (a tar header is 512 bytes) and a run spanning at most RUN_MAX bytes, so a task
# holds at most one run's bytes at a time and at most RUN_GAP bytes a member are read in vain.
RUN_GAP = 64 << 10
RUN_MAX = 64 << 20


def member_runs(entries: Sequence[SourceEntry], *, max_gap: int | None = None,
                max_bytes: int | None = None) -> list[list[int]]:
    """Positions in `entries` grouped into runs that one ranged read covers: tar members of one
    file, in offset order, each within `max_gap` bytes of the previous one's end, the run
    spanning at most `max_bytes`. Plain files, empty members and members that fit no run are
    runs of one. Runs come in the order of their first entry. Defaults: RUN_GAP, RUN_MAX."""
    max_gap = RUN_GAP if max_gap is None else max_gap
    max_bytes = RUN_MAX if max_bytes is None else max_bytes
    order = sorted((i for i, e in enumerate(entries) if e.member is not None and e.size > 0),
                   key=lambda i: (entries[i].path, entries[i].offset or 0))
    runs: list[list[int]] = []
    run: list[int] = []
    for i in order:
        entry = entries[i]
        if run:
            first, last = entries[run[0]], entries[run[-1]]
            start, end = first.offset or 0, (last.offset or 0) + last.size
            offset = entry.offset or 0
            if (entry.path == last.path and end <= offset <= end + max_gap
                    and offset + entry.size - start <= max_bytes):
                run.append(i)
                continue
            runs.append(run)
        run = [i]
    if run:
        runs.append(run)
    runs = [r for r in runs if len(r) > 1]
    grouped = {i for r in runs for i in r}
    runs += [[i] for i in range(len(entries)) if i not in grouped]
    return sorted(runs, key=min)


def read_entries(entries: Sequence[SourceEntry], *, max_gap: int | None = None,
                 max_bytes: int | None = None) -> Iterator[tuple[int, bytes | SourceError]]:
    """(position, bytes) of every entry — or the SourceError that `read_entry` would raise —
    run by run (`member_runs`): adjacent members of a tar cost one ranged request. A run whose
    read fails or comes back short is read again member by member, so each entry gets exactly
    the bytes or the error it would get alone."""
    for run in member_runs(entries, max_gap=max_gap, max_bytes=max_bytes):
        block = None
        if len(run) > 1:
            first, last = entries[run[0]], entries[run[-1]]
            start = first.offset or 0
            length = (last.offset or 0) + last.size - start
            try:
                block = storage.read_range(first.path, start, length)
            except (OSError, storage.StorageError):
                block = None
            if block is not None and len(block) != length:
                block = None
        for i in run:
            entry = entries[i]
            if block is not None:
                at = (entry.offset or 0) - (entries[run[0]].offset or 0)
                yield i, block[at:at + entry.size]
                continue
            try:
                yield i, read_entry(entry)
            except SourceError as exc:
                yield i, exc


# -- scanning --------------------------------------------------------------------------------
def _is_tar(name: str) -> bool:
    return name.lower().endswith(".tar")


def _index_rel(tar_rel: str) -> str:
    return (tar_rel[:-4] + ".json") if tar_rel else ""


def _ext(name: str) -> str:
    return PurePosixPath(name).name.partition(".")[2].lower()


def _scan_all(root: str, tars: list[tuple[str, int]], index_root: str | None) -> list[tar_index.TarScan]:
    """Members of every tar, in listing order (tars are indexed in parallel threads)."""
    if not tars:
        return []
    with ThreadPoolExecutor(min(_INDEX_THREADS, len(tars))) as pool:
        return list(pool.map(lambda t: _scan_one(root, *t, index_root), tars))


def _scan_one(root: str, rel: str, size: int, index_root: str | None = None) -> tar_index.TarScan:
    tar = str(storage.join(root, rel)) if rel else root
    for where in _index_places(tar, rel, index_root):
        index = tar_index.fitting_index(where, tar, size)
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
        _keep_index(tar, scan.index)
    return scan


def _index_places(tar: str, rel: str, index_root: str | None) -> list[storage.Target]:
    """Where an index of `tar` may be, in the order asked: under `--src-index` at the tar's
    relative path, beside the tar, and (remote tars) this user's cache."""
    places: list[storage.Target] = []
    if index_root is not None:
        if rel:
            places.append(storage.join(index_root, _index_rel(rel)))
        elif index_root.lower().endswith(".json"):
            places.append(index_root)
        else:
            places.append(storage.join(index_root, storage.name_of(tar_index.index_path(tar))))
    places.append(tar_index.index_path(tar))
    if storage.is_remote(tar):
        places.append(tar_index.cached_index_path(tar))
    return places


def _keep_index(tar: str, index: dict) -> None:
    """Keep the index of a streamed tar for the next run: beside it on a store kdata may write
    to (S3…), in this user's cache for a read-only one (`hf://`, `http(s)://`: kdata never
    commits into a dataset repository) or when writing beside it fails."""
    data = tar_index.index_bytes(index)
    if not _read_only(tar):
        try:
            storage.commit_bytes(tar_index.index_path(tar), data, durable=False)
            return
        except (OSError, storage.StorageError) as exc:
            _log.warning("could not write the index of %s (%s); keeping it in this user's cache", tar, exc)
    try:
        storage.commit_bytes(tar_index.cached_index_path(tar), data, durable=False)
    except OSError as exc:
        _log.warning("could not cache the index of %s (%s); it is indexed again next time", tar, exc)


def _read_only(target: str) -> bool:
    return target.split("://", 1)[0].lower() in _READ_ONLY_PROTOCOLS


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
    """One row per key (`_winner_rank`). Only keys found more than once are compared (in
    Python: there are few); a copy that loses to an `updates/` copy is expected and silent,
    any other loser is a `duplicate_key` reject."""
    updates = pl.Series([_in_updates(rel) for rel in source.containers], dtype=pl.Boolean)
    dup = candidates["key"].is_duplicated()
    chosen = [candidates.filter(~dup)]
    if dup.any():
        dups = source._names(candidates.filter(dup))
        dups = dups.with_columns(_upd=updates.gather(dups["container"]), _row=pl.int_range(pl.len()))
        groups: dict[int, list[tuple[str, bool, int, int]]] = {}
        for key, name, upd, size, row in dups.select("key", "name", "_upd", "size", "_row").iter_rows():
            groups.setdefault(key, []).append((name, upd, size, row))
        keep: list[int] = []
        for key, copies in groups.items():
            ranked = sorted(copies, key=_winner_rank)
            winner_name, winner_upd, _, winner_row = ranked[0]
            keep.append(winner_row)
            for name, upd, _, _ in ranked[1:]:
                if not winner_upd:
                    source.rejects.append(SourceReject(name, "duplicate_key", f"post {key} also in {winner_name}"))
        chosen.append(dups.filter(pl.col("_row").is_in(keep)).select(candidates.columns))
    return pl.concat(chosen).sort("key").select(list(FILES_SCHEMA)).rechunk()


def _winner_rank(copy: tuple[str, bool, int, int]) -> tuple:
    """Which copy of a post id is used: a non-empty file before an empty one; then a copy under
    an `updates/` folder (the newest path first: `updates/20240610/…` beats `updates/20240319/…`);
    then the first by name (`rel:member`, compared as text)."""
    name, upd, size, _ = copy
    newest_first = tuple(-ord(c) for c in name) + (1,)  # descending text order, a prefix after its extensions
    return (size == 0, not upd, newest_first if upd else (), name)


def _in_updates(rel: str) -> bool:
    return UPDATES_DIR in PurePosixPath(rel).parts[:-1]
