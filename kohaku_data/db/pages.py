"""Pages of posts as sqlite hands them over: the fetch half of the caption reader.

A page is read with two queries: the post columns (one row per page: every column as one
`group_concat` string), then every relation of the page's posts — the stored blocks of
migration 0011 (db/post_tags.py) while they are current, else one `group_concat` string of
`((post_id - first) << tag bits) | tag_id` (or, when tag ids are not all small non-negative
integers, or for `tag_order = "db"`, separate `post_id`, `tag_id` and `id` strings). One
Python object per column instead of one per post (or one tuple per relation: 5x slower
through the sqlite3 cursor); sqlite's time goes into writing digits, so the short packed
number reads fastest.

This module fetches with sqlite alone — no numpy, no polars — so `kdata caption` starts
fetching while those are still being imported (~0.2 s of a short run); captions/frame.py
parses what it fetched. `PageFetcher` runs ahead in a thread of its own: sqlite releases the
GIL while it steps.

Relations of an id range are one range of the `posttagrelation(post_id)` index; with
migration 0004's covering index `(post_id, tag_id)` sqlite never touches the table rows.
Nothing depends on the order sqlite returns relations in: the layout sorts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kohaku_data.ahead import Ahead
from kohaku_data.db.post_tags import PACKED_RELATIONS_SQL, blocks_current, fetch_blocks, tag_bits

INT_COLUMNS = ("id", "rating", "score", "fav_count", "image_width", "image_height")
TEXT_COLUMNS = ("created_at", "md5", "file_ext")
TEXT_SEP = "\x1f"  # unit separator: never inside a date, an md5 or an extension
# One row per page: count, first and last id, every column as one string (ints comma-separated,
# texts split by TEXT_SEP). All aggregates of one query step through the same rows, so the
# columns stay aligned.
_POST_SQL = (
    "SELECT count(*), min(id), max(id), " + ", ".join(f"group_concat({c})" for c in INT_COLUMNS) + ", "
    + ", ".join(f"group_concat(ifnull({c}, ''), char(31))" for c in TEXT_COLUMNS)
    + " FROM post p WHERE "
)
_REL_SQL = "SELECT group_concat(post_id), group_concat(tag_id){rids} FROM posttagrelation WHERE "
# Packed numbers are parsed as int64: post offset bits + tag bits must fit.
PACKED_BITS = 62


@dataclass(frozen=True)
class RawRelations:
    """A page's relations as fetched: exactly one of `blocks`, `packed` or `columns` is set."""

    span: tuple[int, int]  # first and last post id of the page
    blocks: list[tuple[int, bytes]] | None = None  # stored blocks covering the span
    packed: str | None = None  # PACKED_RELATIONS_SQL text, `bits` tag bits
    bits: int = 0
    columns: tuple[str | None, ...] | None = None  # post_id, tag_id (and id) texts


@dataclass(frozen=True)
class RawPage:
    """One page as fetched: the post row (count, first id, last id, then one text per column
    of INT_COLUMNS + TEXT_COLUMNS) and its relations (None: no posts)."""

    posts: tuple
    relations: RawRelations | None

    @property
    def count(self) -> int:
        return int(self.posts[0])


def fetch_range(conn: sqlite3.Connection, after: int, last: int | None, with_rids: bool) -> RawPage:
    """Posts with `after < id <= last` (no upper bound when `last` is None) and their relations:
    from the stored blocks when they are current, else from SQL."""
    upper = (1 << 62) if last is None else last
    posts = conn.execute(_POST_SQL + "p.id > ? AND p.id <= ?", [after, upper]).fetchone()
    if not posts[0]:
        return RawPage(posts, None)
    span = (int(posts[1]), int(posts[2]))
    if not with_rids and blocks_current(conn):
        return RawPage(posts, RawRelations(span, blocks=fetch_blocks(conn, *span)))
    return RawPage(posts, _fetch_relations(conn, "post_id BETWEEN ? AND ?", list(span), with_rids, span))


def fetch_ids(conn: sqlite3.Connection, ids: Sequence[int], with_rids: bool) -> RawPage:
    """Posts whose id is in `ids` (one JSON parameter: no limit on the number of ids)."""
    ids = [int(i) for i in ids]
    wanted = json.dumps(ids)
    posts = conn.execute(_POST_SQL + "p.id IN (SELECT value FROM json_each(?))", [wanted]).fetchone()
    if not posts[0]:
        return RawPage(posts, None)
    span = (min(ids), max(ids))  # relations of missing posts (orphans) are read too, then dropped
    return RawPage(posts, _fetch_relations(conn, "post_id IN (SELECT value FROM json_each(?))", [wanted],
                                           with_rids, span))


def _fetch_relations(
    conn: sqlite3.Connection, where: str, params: list, with_rids: bool, span: tuple[int, int]
) -> RawRelations:
    """Relations of the posts matching `where`; every post id lies in `span` (first, last)."""
    first, last = span
    bits = tag_bits(conn)
    if not with_rids and bits is not None and (last - first).bit_length() + bits <= PACKED_BITS:
        text = conn.execute(PACKED_RELATIONS_SQL + where, [first, bits, *params]).fetchone()[0]
        return RawRelations(span, packed=text, bits=bits)
    row = conn.execute(_REL_SQL.format(rids=", group_concat(id)" if with_rids else "") + where, params).fetchone()
    return RawRelations(span, columns=tuple(row))


def page_bounds(conn: sqlite3.Connection, chunk_size: int) -> Iterator[tuple[int, int | None]]:
    """(after, last) id bounds of consecutive pages of `chunk_size` posts; the last page's
    `last` is None. Walks the post ids only (keyset + OFFSET), so it is cheap to run ahead."""
    after = -(1 << 62)
    while True:
        row = conn.execute("SELECT id FROM post WHERE id > ? ORDER BY id LIMIT 1 OFFSET ?",
                           [after, chunk_size - 1]).fetchone()
        if row is None:
            yield after, None
            return
        yield after, int(row[0])
        after = int(row[0])


@dataclass(frozen=True)
class PageSpec:
    """Which posts make a page: an id range (`after < id <= last`, `last` None = no end) or a
    sorted id list. Small and picklable: worker processes fetch the page themselves."""

    after: int = 0
    last: int | None = None
    ids: tuple[int, ...] | None = None

    def fetch(self, conn: sqlite3.Connection, with_rids: bool) -> RawPage:
        if self.ids is not None:
            return fetch_ids(conn, self.ids, with_rids)
        return fetch_range(conn, self.after, self.last, with_rids)


def page_specs(conn: sqlite3.Connection, ids: Sequence[int] | None, chunk_size: int) -> Iterator[PageSpec]:
    """The pages of a job: every post by id ranges (`ids` None), else the sorted unique ids."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if ids is None:
        return (PageSpec(after=a, last=b) for a, b in page_bounds(conn, chunk_size))
    wanted = sorted({int(i) for i in ids})
    return (PageSpec(ids=tuple(wanted[i:i + chunk_size])) for i in range(0, len(wanted), chunk_size))


def open_reader(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for page reads, usable from another thread. It maps the file:
    a relation scan without one read() call per page (half of sqlite's time went to pread)."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute(f"PRAGMA mmap_size={1 << 40}")  # sqlite caps it at its compile-time maximum
    return conn


class PageFetcher:
    """The raw pages of a job, in order, fetched by a thread of its own (kohaku_data/ahead.py)
    with a read-only connection of its own, at most `ahead` pages before the consumer. It sees
    what is committed to the file. Use as a context manager (or `close()`): a statement in
    progress is interrupted and the thread stops."""

    def __init__(self, db_path: str | Path, ids: Sequence[int] | None, chunk_size: int, with_rids: bool,
                 ahead: int = 3) -> None:
        self._conn: sqlite3.Connection | None = None
        self._pages: Ahead[RawPage] = Ahead(lambda: self._fetch(str(db_path), ids, chunk_size, with_rids), ahead,
                                            "kdata-page-fetcher", interrupt=self._interrupt)

    def _fetch(self, db_path: str, ids: Sequence[int] | None, chunk_size: int, with_rids: bool) -> Iterator[RawPage]:
        self._conn = open_reader(db_path)
        try:
            for spec in page_specs(self._conn, ids, chunk_size):
                yield spec.fetch(self._conn, with_rids)
        finally:
            self._conn.close()

    def _interrupt(self) -> None:
        if self._conn is not None:
            try:
                self._conn.interrupt()
            except sqlite3.ProgrammingError:  # closed meanwhile
                pass

    def __iter__(self) -> Iterator[RawPage]:
        return iter(self._pages)

    def close(self) -> None:
        self._pages.close()

    def __enter__(self) -> "PageFetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
