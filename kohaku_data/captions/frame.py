"""Bulk reads for captions: pages of posts and their post-tag relations parsed into columns,
and the tag table.

db/pages.py fetches a page with sqlite alone (the post columns and the relations as one
string each, or the stored relation blocks); here numpy and polars parse it in C and Rust: one
Python object per column, never one per post or per relation.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.db.pages import INT_COLUMNS, TEXT_COLUMNS, TEXT_SEP, RawPage, RawRelations, fetch_range
from kohaku_data.db.post_tag_blocks import relations_of_blocks
from kohaku_data.errors import KdataError

POST_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64, "created_at": pl.String, "rating": pl.Int64, "score": pl.Int64,
    "fav_count": pl.Int64, "image_width": pl.Int64, "image_height": pl.Int64,
    "md5": pl.String, "file_ext": pl.String,
}
TAG_SCHEMA: dict[str, pl.DataType] = {
    "tag_id": pl.Int64, "name": pl.String, "type": pl.Int64, "popularity": pl.Int64,
}
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
    problem = CaptionReadError(f"{what} holds a value that is not an integer: repair the DB")
    try:
        out = np.fromstring(text, dtype=np.int64, sep=",")  # C parser; sep mode is not deprecated
    except ValueError:  # numpy ≥ 2.4 raises where it stopped early before
        raise problem from None
    if len(out) != text.count(",") + 1:
        raise problem
    return out


def parse_relations(raw: RawRelations) -> Relations:
    """Relations as fetched → parallel int64 arrays."""
    if raw.blocks is not None:
        return Relations(*relations_of_blocks(raw.blocks, *raw.span), None)
    if raw.columns is None:
        packed = parse_ints(raw.packed, "posttagrelation.post_id")
        post_id = packed >> raw.bits
        post_id += raw.span[0]
        return Relations(post_id, np.bitwise_and(packed, (1 << raw.bits) - 1, out=packed), None)
    post_id = parse_ints(raw.columns[0], "posttagrelation.post_id")
    tag_id = parse_ints(raw.columns[1], "posttagrelation.tag_id")
    rid = parse_ints(raw.columns[2], "posttagrelation.id") if len(raw.columns) > 2 else None
    if len(tag_id) != len(post_id) or (rid is not None and len(rid) != len(post_id)):
        raise CaptionReadError("posttagrelation has rows with a NULL post_id or tag_id: repair the DB")
    return Relations(post_id, tag_id, rid)


def parse_posts(row: tuple) -> pl.DataFrame:
    """The post row of a RawPage → POST_SCHEMA frame, sorted by id."""
    count, texts = row[0], row[3:]
    if not count:
        return pl.DataFrame(schema=POST_SCHEMA)
    ints, strings = texts[:len(INT_COLUMNS)], texts[len(INT_COLUMNS):]
    columns: dict[str, pl.Series] = {c: pl.Series(c, parse_ints(t, f"post.{c}")) for c, t in zip(INT_COLUMNS, ints)}
    for name, text in zip(TEXT_COLUMNS, strings):
        # polars splits in Rust: no Python str per value
        columns[name] = pl.Series(name, [text]).str.split(TEXT_SEP).explode()
    if any(len(v) != count for v in columns.values()):
        raise CaptionReadError("post has NULL values in NOT NULL columns: repair the DB")
    frame = pl.DataFrame([columns[c] for c in POST_SCHEMA])
    return frame.with_columns(md5=pl.col("md5").replace("", None)).sort("id")


def parse_page(raw: RawPage) -> tuple[pl.DataFrame, Relations]:
    """A fetched page → (posts sorted by id, their relations)."""
    if raw.relations is None:
        return pl.DataFrame(schema=POST_SCHEMA), _no_relations()
    return parse_posts(raw.posts), parse_relations(raw.relations)


def read_post_range(
    conn: sqlite3.Connection, after: int, last: int | None, with_rids: bool
) -> tuple[pl.DataFrame, Relations]:
    """Posts with `after < id <= last` (no upper bound when `last` is None), by id, and their
    relations (from the stored blocks when they are current, else from SQL)."""
    return parse_page(fetch_range(conn, after, last, with_rids))


def _no_relations() -> Relations:
    return Relations(np.empty(0, np.int64), np.empty(0, np.int64), None)


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
        self.job_cache: dict[str, Any] = {}  # per-job helpers of later steps (token counters: variants.py)
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
        # char(31) is TEXT_SEP
        "group_concat(name, char(31)) FROM (SELECT id, type, popularity, name FROM tag ORDER BY id)"
    ).fetchone()
    if not count:
        return pl.DataFrame(schema=TAG_SCHEMA)
    split = pl.Series("name", [names]).str.split(TEXT_SEP).explode()
    if len(split) != count:
        rows = conn.execute("SELECT id AS tag_id, name, type, popularity FROM tag").fetchall()
        return pl.DataFrame(rows, schema=TAG_SCHEMA, orient="row")
    return pl.DataFrame({
        "tag_id": parse_ints(ids, "tag.id"), "name": split,
        "type": parse_ints(types, "tag.type"), "popularity": parse_ints(pops, "tag.popularity"),
    }, schema=TAG_SCHEMA)
