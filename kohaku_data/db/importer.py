"""Import Danbooru metadata into a Danbooru2023 sqlite: idempotent upserts of posts and tags.

`upsert_posts(db, posts)` takes post dicts exactly as Danbooru's API returns them and writes them
in one transaction. `import_files(db, paths)` reads posts.json pages, JSONL(.gz) dumps and tag CSVs,
sends bad records to a rejects JSONL file, and commits whole batches so a killed import leaves a
consistent file that a rerun completes (reruns are idempotent upserts).

Two paths write posts. The per-record path (`parse_post` + `_Batch`) handles everything. JSONL
batches of new (or unchanged) posts take a columnar path instead (`read_frame` + `FrameWriter`):
polars parses the batch, tags are split and mapped to ids as columns, and rows go to sqlite many
per statement. It takes only batches the per-record path would accept as they are, and writes the
same rows; any doubt (a bad line, an already stored post with another version) sends the batch to
the per-record path, so rejects keep exact line numbers.

Invariants kept on every write: `tag.popularity` equals the number of `posttagrelation` rows of
that tag (adjusted by deltas, never recounted), and a post's relations equal its tag strings.

Modules: `records.py` (API dict → validated row), `upsert.py` (per-record writes),
`columnar.py` (the JSONL fast path), `tag_rows.py` (tag CSV rows), and this one (files, batches,
rejects, deferred indexes). The public names are all importable from here.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar


from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.keepers import DB_KEEPERS
from kohaku_data.db.summary import Keeper
from kohaku_data.progress import progress_bar
from kohaku_data.db.columnar import FrameWriter, TagIdCache, read_frame
from kohaku_data.db.records import InputFileError, ParsedPost, RecordError, UnknownInputError, parse_post
from kohaku_data.db.provenance import FileHash, SourceRecord, record as record_source
from kohaku_data.db.relations import (
    RelationCounts, newest_per_pair, parsed_relations, relation_kind, write_relations,
)
from kohaku_data.db.snapshot import SnapshotPolicy, import_snapshot, is_parquet, open_snapshot, row_count
from kohaku_data.db.tag_rows import ParsedTag, TagCounts, parse_tag_row, upsert_tags
from kohaku_data.db.upsert import UpsertCounts, _Batch, _require_writable, upsert_posts, write_parsed

__all__ = [
    "DEFAULT_BATCH_SIZE", "IMPORT_CACHE_KIB", "IMPORT_WAL_PAGES", "ImportSummary", "InputFileError",
    "RecordError", "SnapshotPolicy", "TagCounts", "UnknownInputError", "UpsertCounts",
    "default_rejects_path", "import_files", "parse_post", "read_frame", "retire_row_triggers", "upsert_posts",
]





# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
DEFAULT_BATCH_SIZE = 10_000
# sqlite's page cache while importing (released afterwards). A deferred index build also sorts
# in memory up to this size, so the import's peak is about twice it: at 512 MiB a 12M-post
# snapshot peaked at 1,428 MiB in the index rebuild; 256 MiB cut a 1M-post import's peak from
# 1,342-1,365 to 828 MiB at no cost in time (66 vs 71-78 CPU-s: more, smaller sorted runs to merge).
IMPORT_CACHE_KIB = 256 * 1024
IMPORT_WAL_PAGES = 65_536  # WAL pages between automatic checkpoints while importing (~256 MB)
T = TypeVar("T")


@dataclass
class ImportSummary:
    files: int = 0
    posts: UpsertCounts = field(default_factory=UpsertCounts)
    tags: TagCounts = field(default_factory=TagCounts)
    relations: RelationCounts = field(default_factory=RelationCounts)  # tag implications / aliases
    rejected: int = 0
    rejects_path: Path | None = None  # None when nothing was rejected
    migrations_applied: list[str] = field(default_factory=list)
    seconds: float = 0.0
    index_seconds: float = 0.0  # of `seconds`: rebuilding deferred indexes at the end
    sources: list[SourceRecord] = field(default_factory=list)  # per file, as recorded (provenance.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "posts": vars(self.posts),
            "tags": vars(self.tags),
            "relations": vars(self.relations),
            "rejected": self.rejected,
            "rejects_path": str(self.rejects_path) if self.rejects_path else None,
            "migrations_applied": self.migrations_applied,
            "seconds": round(self.seconds, 3),
            "index_seconds": round(self.index_seconds, 3),
            "sources": [vars(s) for s in self.sources],
        }


def default_rejects_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".rejects.jsonl")


class _Rejects:
    """Rejected records as JSONL, written to a side file and moved into place at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.count = 0
        self._fh: io.TextIOWrapper | None = None

    def add(self, file: Path, line: int | None, reason: str, record: Any) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.partial, "w", encoding="utf-8")
        entry = {"file": str(file), "line": line, "reason": reason, "record": record}
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> Path | None:
        """Publish the file (only if something was rejected) and return its path."""
        if self._fh is None:
            return None
        self._fh.close()
        os.replace(self.partial, self.path)
        return self.path


def _kind(path: Path) -> str:
    """'parquet', 'tags' (CSV), 'array' or 'jsonl', from the content (the name only tells a CSV
    from other text); anything else is `UnknownInputError`."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
    if is_parquet(magic):
        open_snapshot(path)  # its column shape is checked before anything is written
        return "parquet"
    try:
        with _open_binary(path) as fh:
            head = fh.read(4096)
    except (OSError, EOFError):  # a .gz name on bytes that are not gzip
        head = b"\0"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"[", b"{") or (not text and not head):  # an empty file: nothing to import
        return "array" if text.startswith(b"[") else "jsonl"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv") and _is_text(head):
        return "tags"
    raise UnknownInputError(f"{path.name} is not a JSON/JSONL/CSV/parquet file kdata can import")


def _is_text(head: bytes) -> bool:
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a character cut at the end of the head is fine
    return True


def _holds_relations(path: Path) -> bool:
    """Tag implication / alias records (API format) rather than posts, from the first bytes."""
    with _open_binary(path) as fh:
        head = fh.read(4096)
    return b'"antecedent_name"' in head and b'"tag_string' not in head


def _open_binary(path: Path) -> io.BufferedIOBase:
    raw = open(path, "rb")
    if path.name.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _raw_position(fh: Any) -> int:
    """Bytes consumed of the file on disk (of the compressed file for .gz)."""
    inner = getattr(fh, "fileobj", None)
    return (inner or fh).tell()


def _jsonl_records(path: Path, lines: Iterable[bytes], first: int = 1) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, decoded object or raw text, error) per non-blank line."""
    for number, line in enumerate(lines, first):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            yield number, line.decode("utf-8", "replace").rstrip("\n"), f"broken JSON: {exc}"


def _array_records(path: Path, fh: Any) -> Iterator[tuple[int, Any, str | None]]:
    """Elements of a posts.json page (a JSON array), each with the line it starts on."""
    try:
        text = fh.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        yield 1, None, f"file is not UTF-8: {exc}"
        return
    decoder = json.JSONDecoder()
    pos, line = _skip_ws(text, 0), 1
    if text[pos:pos + 1] != "[":
        yield 1, text[:200], "expected a JSON array of posts"
        return
    pos = _skip_ws(text, pos + 1)
    counted = 0  # newlines are counted incrementally: `line` is the line `pos` is on
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except ValueError as exc:
            # The rest of the array cannot be delimited any more: reject it as one record.
            yield line, text[pos:pos + 200], f"broken JSON (rest of file skipped): {exc}"
            return
        yield line, obj, None
        pos = _skip_ws(text, end)
        if text[pos:pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _import_posts(
    db: DanbooruDB, path: Path, fh: Any, kind: str, rejects: _Rejects, summary: ImportSummary,
    batch_size: int, bar: Any,
) -> None:
    if kind == "jsonl":
        _import_jsonl(db, path, fh, rejects, summary, batch_size, bar)
        return
    records = _array_records(path, fh)
    _write_in_batches(_parsed_posts(path, records, rejects), batch_size,
                      lambda batch: summary.posts.add(write_parsed(db, batch)), bar, fh)


def _parsed_posts(
    path: Path, records: Iterable[tuple[int, Any, str | None]], rejects: _Rejects,
) -> Iterator[ParsedPost]:
    """The posts of (line, record, error) triples that parse; the others go to `rejects`."""
    for line, record, error in records:
        if error is None:
            try:
                yield parse_post(record)
                continue
            except RecordError as exc:
                error = exc.reason
        rejects.add(path, line, error, record)


def _import_jsonl(
    db: DanbooruDB, path: Path, fh: Any, rejects: _Rejects, summary: ImportSummary,
    batch_size: int, bar: Any,
) -> None:
    """Batches of `batch_size` lines: columnar when possible, else record by record."""
    first, done = 1, 0
    cache = TagIdCache()
    while lines := list(itertools.islice(fh, batch_size)):
        summary.posts.add(_import_lines(db, path, lines, first, rejects, cache))
        first += len(lines)
        done = _advance(bar, fh, done)
    _advance(bar, fh, done)


def _import_lines(
    db: DanbooruDB, path: Path, lines: list[bytes], first: int, rejects: _Rejects, cache: TagIdCache,
) -> UpsertCounts:
    _require_writable(db)
    frame = read_frame(lines)
    if frame is not None:
        with db.database.atomic():
            counts = FrameWriter(_Batch(db, db.connection()), cache).run(frame)
        if counts is not None:
            return counts
    return write_parsed(db, list(_parsed_posts(path, _jsonl_records(path, lines, first), rejects)))


def _import_tags(
    db: DanbooruDB, path: Path, fh: Any, rejects: _Rejects, summary: ImportSummary,
    batch_size: int, bar: Any,
) -> None:
    text = io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="")
    _write_in_batches(_parsed_tags(path, csv.reader(text), rejects), batch_size,
                      lambda batch: summary.tags.add(upsert_tags(db, batch)), bar, fh)


def _import_relations(
    db: DanbooruDB, path: Path, fh: Any, kind: str, rejects: _Rejects, summary: ImportSummary,
    batch_size: int, bar: Any,
) -> None:
    """`/tag_implications.json` or `/tag_aliases.json` pages (array or JSONL): active pairs in,
    non-active ones out (kohaku_data/db/relations.py)."""
    records = _jsonl_records(path, fh) if kind == "jsonl" else _array_records(path, fh)
    relations = parsed_relations(records, lambda line, reason, record: rejects.add(path, line, reason, record))
    which = relation_kind(path)
    if which is None:
        raise InputFileError(
            f"{path.name} holds tag relations (antecedent_name, consequent_name) but its name says neither "
            "implications nor aliases: rename it to *implications*.json or *aliases*.json"
        )
    # The newest record of a pair decides (by updated_at, then id), not its place in the file:
    # the whole file is read first (relation files are small: ~50k records).
    relations = newest_per_pair(relations)
    _write_in_batches(relations, batch_size,
                      lambda batch: summary.relations.add(write_relations(db, which, batch)), bar, fh)


def _parsed_tags(path: Path, reader: Any, rejects: _Rejects) -> Iterator[ParsedTag]:
    """The tag rows of a CSV reader that parse; bad CSV and bad rows go to `rejects`."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            rejects.add(path, reader.line_num, f"bad CSV: {exc}", None)
            continue
        if not row:
            continue
        try:
            yield parse_tag_row(row)
        except RecordError as exc:
            rejects.add(path, reader.line_num, exc.reason, row)


def _write_in_batches(
    items: Iterable[T], batch_size: int, write: Callable[[list[T]], None], bar: Any, fh: Any,
) -> None:
    """`write` the items `batch_size` at a time (one transaction each), moving the progress
    bar by the bytes read so far after each batch."""
    batch: list[T] = []
    done = 0
    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            write(batch)
            batch = []
            done = _advance(bar, fh, done)
    if batch:
        write(batch)
    _advance(bar, fh, done)


def _advance(bar: Any, fh: Any, done: int) -> int:
    now = _raw_position(fh)
    bar.advance(now - done)
    return now


def import_files(
    db: DanbooruDB,
    paths: Iterable[str | Path],
    *,
    rejects_path: Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    defer: bool | None = None,
    policy: SnapshotPolicy | None = None,
    keepers: Sequence[Keeper] = DB_KEEPERS,
) -> ImportSummary:
    """Import posts.json pages, JSONL(.gz) post dumps, tag CSVs(.gz), tag implication / alias
    pages and parquet snapshots (posts or tags, `snapshot.py`), in the given order.

    Pending migrations are applied first (the alias table and `post.updated_at` are needed).
    Bad records go to `rejects_path` (default: `<db>.rejects.jsonl` beside the DB) and the
    import goes on. Each batch is one transaction: after a kill, rerun the same command.
    `defer` (None: automatic, when the input likely holds more posts than the file) drops the
    secondary indexes and rebuilds them at the end; a killed run leaves them for the rerun.
    `policy`: the parquet snapshots' choices (NULL is_deleted…). Every file is recorded with its
    sha256 and counts in `kdata_import_source` (`provenance.py`). `keepers`: what is kept current
    once the rows are in (db/summary.py; callers above db/ pass kohaku_data.keepers.SUMMARY_KEEPERS).
    """
    from kohaku_data.db import summary as db_summary
    from kohaku_data.db.migrate import defer_indexes, migrate, restore_deferred_indexes

    _require_writable(db)
    paths = _checked_inputs(paths, batch_size)
    kinds = {path: _kind(path) for path in paths}  # an unknown file stops the import before any write
    policy = policy or SnapshotPolicy()
    started = time.perf_counter()
    defer = defer if defer is not None else _worth_deferring(db, kinds)
    # Indexes a killed bulk import left deferred stay so when this run defers them again.
    summary = ImportSummary(migrations_applied=migrate(db, keep_deferred=defer, refresh_summaries=False))
    rejects = _Rejects(rejects_path or default_rejects_path(db.path))
    total = sum(p.stat().st_size for p in paths)
    # No write-counting trigger call per row: the counter is bumped once before and after.
    with _bulk_pragmas(db.connection()), db_summary.suspended(db):
        if defer:
            defer_indexes(db)
            retire_row_triggers(db)
        try:
            with progress_bar("import", total, progress) as bar:
                for path in paths:
                    _import_recorded(db, path, kinds[path], rejects, summary, batch_size, bar, policy)
                    summary.files += 1
        finally:
            indexes_started = time.perf_counter()
            restore_deferred_indexes(db)  # also after an error: the batches written stay usable
            summary.index_seconds = time.perf_counter() - indexes_started
            summary.rejects_path = rejects.close()
            summary.rejected = rejects.count
            summary.seconds = time.perf_counter() - started
    db_summary.refresh(db, keepers)  # counts, thresholds, /stats for the next reader (db/summary.py)
    return summary


def retire_row_triggers(db: DanbooruDB) -> None:
    """Before a bulk write: kdata's own indexes that triggers keep current row by row (post tag
    blocks, the query bitmap index, source trigrams) are marked stale and their triggers
    dropped; the keepers' refresh after the rows are in rebuilds each once and puts its
    triggers back. Fired row by row they cost more than the rows themselves: 100k posts' rows
    took 2.3 CPU-s to write with the bitmap and trigram triggers, 0.5 without (the blocks' triggers,
    dropped before too, another ~1 s)."""
    from kohaku_data.db import post_tags, query_bits, source_trigrams

    post_tags.retire(db, drop_triggers=True)
    query_bits.retire(db)
    source_trigrams.retire(db)


def _checked_inputs(paths: Iterable[str | Path], batch_size: int) -> list[Path]:
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise InputFileError(f"input file {path} does not exist")
    if batch_size < 1:
        raise InputFileError(f"batch_size must be at least 1, got {batch_size}")
    return paths


@contextmanager
def _bulk_pragmas(conn) -> Iterator[None]:
    """Settings for a bulk import, restored afterwards (also after an error)."""
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    checkpoint = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    # Fewer, larger WAL checkpoints (each one syncs): ~5% less time; the WAL stays bounded.
    conn.execute(f"PRAGMA wal_autocheckpoint = {IMPORT_WAL_PAGES}")
    # Index updates on a big file are random page writes, and a deferred index build sorts in
    # memory up to this size: a larger page cache keeps both in RAM.
    conn.execute(f"PRAGMA cache_size = {-IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint)}")


def _worth_deferring(db: DanbooruDB, kinds: dict[Path, str]) -> bool:
    """Rebuilding indexes costs about as much as the whole table's rows: only worth it when the
    input likely holds more posts than the file already has (~2 kB per API post, ~5x in .gz;
    a parquet file says how many rows it has)."""
    incoming = sum(
        row_count(p) if kind == "parquet"
        else p.stat().st_size // (400 if p.name.lower().endswith(".gz") else 2000)
        for p, kind in kinds.items() if kind != "tags"
    )
    existing = db.connection().execute("SELECT max(rowid) FROM post").fetchone()[0] or 0
    return incoming > max(existing, 1000)


def _import_recorded(
    db: DanbooruDB, path: Path, kind: str, rejects: _Rejects, summary: ImportSummary, batch_size: int,
    bar: Any, policy: SnapshotPolicy,
) -> None:
    """Import one file and record its provenance (name, size, sha256, this run's counts)."""
    hasher = FileHash(path)
    before = (vars(summary.posts).copy(), vars(summary.tags).copy(), vars(summary.relations).copy(), rejects.count)
    label, policies = _import_file(db, path, kind, rejects, summary, batch_size, bar, policy)
    posts = {k: v - before[0][k] for k, v in vars(summary.posts).items()}
    tags = {k: v - before[1][k] for k, v in vars(summary.tags).items() if k != "aliases"}
    relations = {k: v - before[2][k] for k, v in vars(summary.relations).items()}
    rejected = rejects.count - before[3]
    written = {k: posts[k] + tags[k] for k in ("inserted", "updated", "unchanged")}
    written["inserted"] += relations["implications"] + relations["aliases"]
    written["updated"] += relations["removed"]
    src = SourceRecord(path.name, path.stat().st_size, hasher.hexdigest(), label,
                       sum(written.values()) + rejected, rejected=rejected, policies=policies, **written)
    record_source(db, src)
    summary.sources.append(src)


def _import_file(
    db: DanbooruDB, path: Path, kind: str, rejects: _Rejects, summary: ImportSummary, batch_size: int,
    bar: Any, policy: SnapshotPolicy,
) -> tuple[str, dict[str, Any]]:
    """Import one file; returns (format label, policy choices that applied) for its provenance."""
    if kind == "parquet":
        return _import_parquet(db, path, rejects, summary, batch_size, bar, policy)
    try:
        with _open_binary(path) as fh:
            if kind == "tags":
                _import_tags(db, path, fh, rejects, summary, batch_size, bar)
                return "tag csv", {}
            if _holds_relations(path):
                _import_relations(db, path, fh, kind, rejects, summary, batch_size, bar)
                return f"{relation_kind(path)} ({kind})", {"relations": "newest record of a pair decides"}
            _import_posts(db, path, fh, kind, rejects, summary, batch_size, bar)
            return f"posts ({kind})", {}
    except (OSError, EOFError) as exc:  # truncated or corrupt .gz, unreadable file
        raise InputFileError(
            f"cannot read {path}: {exc}; batches before the error are imported, fix the file and rerun"
        ) from exc


def _import_parquet(
    db: DanbooruDB, path: Path, rejects: _Rejects, summary: ImportSummary, batch_size: int, bar: Any,
    policy: SnapshotPolicy,
) -> tuple[str, dict[str, Any]]:
    size = path.stat().st_size
    moved = [0]

    def progress(fraction: float) -> None:
        now = int(fraction * size)
        bar.advance(now - moved[0])
        moved[0] = now

    import pyarrow as pa

    try:
        result = import_snapshot(
            db, path, lambda row, reason, record: rejects.add(path, row, reason, record),
            batch_size=batch_size, policy=policy, progress=progress,
        )
    except (OSError, pa.ArrowException) as exc:  # a truncated or corrupt file
        raise InputFileError(
            f"cannot read {path}: {exc}; batches before the error are imported, fix the file and rerun"
        ) from exc
    summary.posts.add(result.posts)
    summary.tags.add(result.tags)
    return result.shape.label, policy.as_dict(result.shape) if result.shape.kind == "posts" else {}
