"""Bulk reads for captions: a page of posts, their post-tag relations, and the tag table.

A page is read with two queries: the post columns (one row per post, by id), then every
relation of the page's posts as one `group_concat` string of `((post_id - first) << tag bits) |
tag_id` (or, when tag ids are not all small non-negative integers, or for `tag_order = "db"`,
separate `post_id`, `tag_id` and `id` strings), parsed by numpy in C. One Python object per
column instead of one per post (or one tuple per relation: 5x slower through the sqlite3
cursor); sqlite's time goes into writing digits, so the short packed number reads fastest.

Relations of an id range are one range of the `posttagrelation(post_id)` index; with
migration 0004's covering index `(post_id, tag_id)` sqlite never touches the table rows, which
halves the read. Nothing depends on the order sqlite returns relations in: the layout sorts.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.db.post_tags import PACKED_RELATIONS_SQL, block_relations, blocks_current, tag_bits
from kohaku_data.errors import KdataError

POST_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64, "created_at": pl.String, "rating": pl.Int64, "score": pl.Int64,
    "fav_count": pl.Int64, "image_width": pl.Int64, "image_height": pl.Int64,
    "md5": pl.String, "file_ext": pl.String,
}
TAG_SCHEMA: dict[str, pl.DataType] = {
    "tag_id": pl.Int64, "name": pl.String, "type": pl.Int64, "popularity": pl.Int64,
}
_INT_COLUMNS = ("id", "rating", "score", "fav_count", "image_width", "image_height")
_TEXT_COLUMNS = ("created_at", "md5", "file_ext")
_TEXT_SEP = "\x1f"  # unit separator: never inside a date, an md5 or an extension
# One row per page: every column as one string (ints comma-separated, texts split by _TEXT_SEP).
# All aggregates of one query step through the same rows, so the columns stay aligned.
_POST_SQL = (
    "SELECT count(*), " + ", ".join(f"group_concat({c})" for c in _INT_COLUMNS) + ", "
    + ", ".join(f"group_concat(ifnull({c}, ''), char(31))" for c in _TEXT_COLUMNS)
    + " FROM post p WHERE "
)
_REL_SQL = "SELECT group_concat(post_id), group_concat(tag_id){rids} FROM posttagrelation WHERE "
# PACKED_RELATIONS_SQL (db/post_tags.py) reads relations 1.8x faster than two columns.
_PACKED_BITS = 62


class CaptionReadError(KdataError):
    """The DB holds values the caption reader cannot use (e.g. text in an integer column)."""


class KeyIndex:
    """Positions of keys in a sorted, unique key array; built once, asked many times."""

    def __init__(self, sorted_keys: np.ndarray) -> None:
        self.keys = sorted_keys
        self._low, self._table = 0, None
        if len(sorted_keys):
            low, span = int(sorted_keys[0]), int(sorted_keys[-1]) - int(sorted_keys[0]) + 1
            if span <= 4 * len(sorted_keys) + 4096:
                # Dense ids (the usual case): a lookup table is one gather, 10x faster than a search.
                self._low, self._table = low, np.full(span + 1, -1, dtype=np.int64)
                self._table[sorted_keys - low] = np.arange(len(sorted_keys))

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, position) of each query."""
        if not len(self.keys) or not len(queries):
            return np.zeros(len(queries), dtype=bool), np.zeros(len(queries), dtype=np.int64)
        if self._table is not None:
            offset = np.subtract(queries, self._low)
            np.clip(offset, -1, len(self._table) - 1, out=offset)  # out of range → the -1 slot
            position = self._table[offset]
            return position >= 0, position
        position = np.searchsorted(self.keys, queries)
        found = position < len(self.keys)
        found[found] = self.keys[position[found]] == queries[found]
        return found, position


def index_of(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, position) of each query in the sorted, unique `sorted_keys`."""
    return KeyIndex(sorted_keys).find(queries)


@dataclass(frozen=True)
class Relations:
    """Post-tag relations of one page, as parallel int64 arrays (any order)."""

    post_id: np.ndarray
    tag_id: np.ndarray
    rid: np.ndarray | None  # relation ids, read for tag_order = "db" only

    def of_posts(self, post_ids: np.ndarray) -> tuple[np.ndarray, "Relations"]:
        """Row index of each relation's post in the sorted `post_ids`, dropping relations whose
        post is not among them (orphans, or ids outside the page)."""
        found, pi = index_of(post_ids, self.post_id)
        if found.all():
            return pi, self
        rid = self.rid[found] if self.rid is not None else None
        return pi[found], Relations(self.post_id[found], self.tag_id[found], rid)


def parse_ints(text: str | None, what: str) -> np.ndarray:
    if not text:
        return np.empty(0, dtype=np.int64)
    out = np.fromstring(text, dtype=np.int64, sep=",")  # C parser; sep mode is not deprecated
    if len(out) != text.count(",") + 1:
        raise CaptionReadError(f"{what} holds a value that is not an integer: repair the DB")
    return out


def _read_relations(
    conn: sqlite3.Connection, where: str, params: list, with_rids: bool, post_span: tuple[int, int]
) -> Relations:
    """Relations of the posts matching `where`; every post id lies in `post_span` (first, last)."""
    first, last = post_span
    bits = tag_bits(conn)
    if not with_rids and bits is not None and (last - first).bit_length() + bits <= _PACKED_BITS:
        text = conn.execute(PACKED_RELATIONS_SQL + where, [first, bits, *params]).fetchone()[0]
        packed = parse_ints(text, "posttagrelation.post_id")
        post_id = packed >> bits
        post_id += first
        return Relations(post_id, np.bitwise_and(packed, (1 << bits) - 1, out=packed), None)
    sql = _REL_SQL.format(rids=", group_concat(id)" if with_rids else "") + where
    row = conn.execute(sql, params).fetchone()
    post_id = parse_ints(row[0], "posttagrelation.post_id")
    tag_id = parse_ints(row[1], "posttagrelation.tag_id")
    rid = parse_ints(row[2], "posttagrelation.id") if with_rids else None
    if len(tag_id) != len(post_id) or (rid is not None and len(rid) != len(post_id)):
        raise CaptionReadError("posttagrelation has rows with a NULL post_id or tag_id: repair the DB")
    return Relations(post_id, tag_id, rid)


def _read_posts(conn: sqlite3.Connection, where: str, params: list) -> pl.DataFrame:
    """Posts matching `where`, sorted by id."""
    row = conn.execute(_POST_SQL + where, params).fetchone()
    count, ints, texts = row[0], row[1:1 + len(_INT_COLUMNS)], row[1 + len(_INT_COLUMNS):]
    if count == 0:
        return pl.DataFrame(schema=POST_SCHEMA)
    columns: dict[str, pl.Series] = {c: pl.Series(c, parse_ints(t, f"post.{c}")) for c, t in zip(_INT_COLUMNS, ints)}
    for name, text in zip(_TEXT_COLUMNS, texts):
        # polars splits in Rust: no Python str per value
        columns[name] = pl.Series(name, [text]).str.split(_TEXT_SEP).explode()
    if any(len(v) != count for v in columns.values()):
        raise CaptionReadError("post has NULL values in NOT NULL columns: repair the DB")
    frame = pl.DataFrame([columns[c] for c in POST_SCHEMA])
    return frame.with_columns(md5=pl.col("md5").replace("", None)).sort("id")


def read_posts_by_ids(
    conn: sqlite3.Connection, ids: Sequence[int], with_rids: bool
) -> tuple[pl.DataFrame, Relations]:
    """Posts whose id is in `ids` (one JSON parameter: no limit on the number of ids), by id."""
    ids = [int(i) for i in ids]
    wanted = json.dumps(ids)
    posts = _read_posts(conn, "p.id IN (SELECT value FROM json_each(?))", [wanted])
    if posts.height == 0:
        return posts, _no_relations()
    span = (min(ids), max(ids))  # relations of missing posts (orphans) are read too, then dropped
    rel = _read_relations(conn, "post_id IN (SELECT value FROM json_each(?))", [wanted], with_rids, span)
    return posts, rel


def read_post_range(
    conn: sqlite3.Connection, after: int, last: int | None, with_rids: bool
) -> tuple[pl.DataFrame, Relations]:
    """Posts with `after < id <= last` (no upper bound when `last` is None), by id. Relations
    come from the stored blocks when they are current (db/post_tags.py), else from SQL."""
    upper = (1 << 62) if last is None else last
    posts = _read_posts(conn, "p.id > ? AND p.id <= ?", [after, upper])
    if posts.height == 0:
        return posts, _no_relations()
    span = (int(posts["id"][0]), int(posts["id"][-1]))
    if not with_rids and blocks_current(conn):
        return posts, Relations(*block_relations(conn, *span), None)
    return posts, _read_relations(conn, "post_id BETWEEN ? AND ?", list(span), with_rids, span)


def _no_relations() -> Relations:
    return Relations(np.empty(0, np.int64), np.empty(0, np.int64), None)


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
    sorted id list. Small and picklable: worker processes read the page themselves."""

    after: int = 0
    last: int | None = None
    ids: tuple[int, ...] | None = None

    def read(self, conn: sqlite3.Connection, with_rids: bool) -> tuple[pl.DataFrame, Relations]:
        if self.ids is not None:
            return read_posts_by_ids(conn, self.ids, with_rids)
        return read_post_range(conn, self.after, self.last, with_rids)


def iter_post_pages(
    conn: sqlite3.Connection, chunk_size: int, with_rids: bool
) -> Iterator[tuple[pl.DataFrame, Relations]]:
    """Every post, `chunk_size` at a time, by id (each page is an index range)."""
    for after, last in page_bounds(conn, chunk_size):
        yield read_post_range(conn, after, last, with_rids)


def open_reader(path: str | Path) -> sqlite3.Connection:
    """A read-only connection for page reads, usable from another thread. It maps the file:
    a relation scan without one read() call per page (half of sqlite's time went to pread)."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute(f"PRAGMA mmap_size={1 << 40}")  # sqlite caps it at its compile-time maximum
    return conn


def count_posts(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM post").fetchone()[0])


class TagSource:
    """Tag rows by id: the whole table once for big jobs, else only the ids a chunk needs."""

    def __init__(
        self, conn: sqlite3.Connection, whole_table: bool,
        prepare: Callable[[pl.DataFrame], Any], stored: Callable[[], Any] | None = None,
    ) -> None:
        """`stored`: the whole table already prepared (a current DB summary), or None."""
        self._conn, self._prepare = conn, prepare
        self._all: Any = None
        if whole_table:
            self._all = stored() if stored is not None else None
            if self._all is None:
                self._all = self._sorted(read_tag_table(conn))

    def lookup(self, tag_ids: np.ndarray) -> Any:
        """`prepare` of the tag rows (sorted by tag_id) covering `tag_ids`."""
        if self._all is not None:
            return self._all
        wanted = json.dumps(np.unique(tag_ids).tolist())
        return self._sorted(self._read(
            "SELECT id AS tag_id, name, type, popularity FROM tag WHERE id IN (SELECT value FROM json_each(?))",
            [wanted],
        ))

    def _sorted(self, tags: pl.DataFrame) -> Any:
        return self._prepare(tags.sort("tag_id"))

    def _read(self, sql: str, params: list) -> pl.DataFrame:
        rows = self._conn.execute(sql, params).fetchall()
        return pl.DataFrame(rows, schema=TAG_SCHEMA, orient="row")


def read_tag_table(conn: sqlite3.Connection) -> pl.DataFrame:
    """The whole tag table (TAG_SCHEMA), as one string per column (split in C and Rust): a
    million rows as Python tuples cost seconds. A name holding the separator falls back to rows."""
    count, ids, types, pops, names = conn.execute(
        "SELECT count(*), group_concat(id), group_concat(type), group_concat(popularity), "
        # char(31) is _TEXT_SEP
        "group_concat(name, char(31)) FROM (SELECT id, type, popularity, name FROM tag ORDER BY id)"
    ).fetchone()
    if not count:
        return pl.DataFrame(schema=TAG_SCHEMA)
    split = pl.Series("name", [names]).str.split(_TEXT_SEP).explode()
    if len(split) != count:
        rows = conn.execute("SELECT id AS tag_id, name, type, popularity FROM tag").fetchall()
        return pl.DataFrame(rows, schema=TAG_SCHEMA, orient="row")
    return pl.DataFrame({
        "tag_id": parse_ints(ids, "tag.id"), "name": split,
        "type": parse_ints(types, "tag.type"), "popularity": parse_ints(pops, "tag.popularity"),
    }, schema=TAG_SCHEMA)
