"""Bulk reads for captions: posts with their tag ids in one query, and the tag table.

Each post's tag ids come back as one `group_concat` string (one Python object per post instead
of one tuple per post-tag row: 5x faster through the sqlite3 cursor), split into a list column
by polars. The correlated sub-query walks the `posttagrelation(post_id)` index, so a post's
rows come in relation-id order; `rids` is read only for `tag_order = "db"`, which needs it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence

import polars as pl

POST_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64, "created_at": pl.String, "rating": pl.Int64, "score": pl.Int64,
    "fav_count": pl.Int64, "image_width": pl.Int64, "image_height": pl.Int64,
    "md5": pl.String, "file_ext": pl.String, "tids": pl.String, "rids": pl.String,
}
TAG_SCHEMA: dict[str, pl.DataType] = {
    "tag_id": pl.Int64, "name": pl.String, "type": pl.Int64, "popularity": pl.Int64,
}


def _post_sql(where: str, with_rids: bool) -> str:
    rel = "SELECT group_concat({col}) FROM posttagrelation r WHERE r.post_id = p.id"
    rids = f"({rel.format(col='r.id')})" if with_rids else "NULL"
    return (
        "SELECT p.id, p.created_at, p.rating, p.score, p.fav_count, p.image_width, p.image_height, "
        f"p.md5, p.file_ext, ({rel.format(col='r.tag_id')}) AS tids, {rids} AS rids "
        f"FROM post p WHERE {where}"
    )


def read_posts_by_ids(conn: sqlite3.Connection, ids: Sequence[int], with_rids: bool) -> pl.DataFrame:
    """Posts whose id is in `ids` (one JSON parameter: no limit on the number of ids)."""
    sql = _post_sql("p.id IN (SELECT value FROM json_each(?)) ORDER BY p.id", with_rids)
    return _read(conn, sql, [json.dumps([int(i) for i in ids])])


def iter_post_pages(conn: sqlite3.Connection, chunk_size: int, with_rids: bool) -> Iterator[pl.DataFrame]:
    """Every post, `chunk_size` at a time, by id (keyset pages: each page is an index range)."""
    sql = _post_sql("p.id > ? ORDER BY p.id LIMIT ?", with_rids)
    last = -(1 << 62)
    while True:
        page = _read(conn, sql, [last, chunk_size])
        if page.height:
            yield page
        if page.height < chunk_size:
            return
        last = int(page["id"][-1])


def _read(conn: sqlite3.Connection, sql: str, params: list) -> pl.DataFrame:
    frame = pl.read_database(sql, conn, execute_options={"parameters": params}, schema_overrides=POST_SCHEMA)
    return frame if frame.width else pl.DataFrame(schema=POST_SCHEMA)


def count_posts(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM post").fetchone()[0])


def explode_tag_ids(posts: pl.DataFrame) -> pl.DataFrame:
    """(_pi, id, tag_id[, rid]) rows, one per post-tag relation (`_pi`: the post's row index)."""
    cols = [pl.col("_pi"), pl.col("id"), pl.col("tids").str.split(",").cast(pl.List(pl.Int64)).alias("tag_id")]
    explode = ["tag_id"]
    if posts["rids"].null_count() < posts.height:
        cols.append(pl.col("rids").str.split(",").cast(pl.List(pl.Int64)).alias("rid"))
        explode.append("rid")
    return posts.select(cols).explode(explode).drop_nulls("tag_id")


class TagSource:
    """Tag rows by id: the whole table once for big jobs, else only the ids a chunk needs."""

    def __init__(
        self, conn: sqlite3.Connection, whole_table: bool,
        prepare: Callable[[pl.DataFrame], pl.DataFrame] = lambda tags: tags,
    ) -> None:
        self._conn, self._prepare = conn, prepare
        self._all: pl.DataFrame | None = None
        if whole_table:
            self._all = prepare(self._read("SELECT id AS tag_id, name, type, popularity FROM tag", []))

    def lookup(self, tag_ids: pl.Series) -> pl.DataFrame:
        """Tag rows (after `prepare`) covering `tag_ids`."""
        if self._all is not None:
            return self._all
        wanted = json.dumps(tag_ids.unique().drop_nulls().to_list())
        return self._prepare(self._read(
            "SELECT id AS tag_id, name, type, popularity FROM tag WHERE id IN (SELECT value FROM json_each(?))",
            [wanted],
        ))

    def _read(self, sql: str, params: list) -> pl.DataFrame:
        frame = pl.read_database(sql, self._conn, execute_options={"parameters": params}, schema_overrides=TAG_SCHEMA)
        return frame if frame.width else pl.DataFrame(schema=TAG_SCHEMA)
