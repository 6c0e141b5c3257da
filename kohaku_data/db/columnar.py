"""Columnar fast path of the JSONL import: a whole batch parsed by polars, tags split and mapped
to ids as columns, rows written many per statement. It accepts only batches the per-record
path (`upsert.py`) would accept unchanged; the importer sends any other batch there.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.db.enums import TAG_STRING_FIELDS
from kohaku_data.db.records import _POST_COLUMNS, _RATINGS
from kohaku_data.db.upsert import UpsertCounts, _Batch


# --------------------------------------------------------------------------------------------
# Columnar fast path: a whole JSONL batch parsed by polars, tags split and mapped as columns
# --------------------------------------------------------------------------------------------
# Per-record Python (json.loads, dict lookups, tuple building) costs ~20 µs a post; a batch
# read by polars' JSON reader and handled as columns costs a fraction of that. The fast path
# only takes batches it can prove the per-record path would accept unchanged; anything else
# (a bad line, a blank line, a type polars would coerce, a post already stored with another
# version) goes to the per-record path, which writes rejects with exact line numbers.
_TAG_FIELDS = tuple(TAG_STRING_FIELDS)
_TAG_TYPE_OF_FIELD = {k: int(t) for k, t in enumerate(TAG_STRING_FIELDS.values())}
_PL_KIND = {"int": pl.Int64, "int?": pl.Int64, "bool": pl.Boolean, "rating": pl.String}
_SCHEMA: dict[str, Any] = {
    **{name: _PL_KIND.get(kind, pl.String) for name, kind in _POST_COLUMNS},
    "updated_at": pl.String,
    **dict.fromkeys(_TAG_FIELDS, pl.String),
}
_REQUIRED = [name for name, kind in _POST_COLUMNS if kind in ("int", "str")]
# polars turns a number/bool/object under a String column into text, where the per-record path
# rejects it: any text field whose value is not a string or null sends the batch there.
# (A nested object's key of the same name only costs a false alarm, i.e. the slow path.)
# Scanning the raw bytes for that costs as much as parsing them, so only the lines whose parsed
# text looks like such a conversion (a JSON number, true/false, an object or array) are scanned.
_TEXT_FIELDS = [n for n, t in _SCHEMA.items() if t == pl.String and n != "rating"]
_NON_TEXT_VALUE = re.compile(rb'"(?:' + b"|".join(n.encode() for n in _TEXT_FIELDS) + rb')"\s*:\s*[^"\sn]')
_LOOKS_CONVERTED = r"^(?:-?[0-9][0-9.eE+-]*|true|false|\{.*|\[.*)$"
# str.split() also splits on tabs, newlines, \x1c-\x1f and Unicode spaces; the fast path splits
# on " " only, so tag strings holding any other whitespace go to the per-record path.
_ODD_WHITESPACE = r"[^\S ]|[\x1c-\x1f]"


@dataclass(slots=True)
class PostFrame:
    """One validated JSONL batch as columns.

    posts: the post columns in published order (converted like `parse_post`) + updated_at;
    tags: one row per (post row, tag name mention) with the tag type of its string.
    """

    posts: pl.DataFrame
    tags: pl.DataFrame


def read_frame(lines: list[bytes]) -> PostFrame | None:
    """Parse a batch of JSONL lines; None when the per-record path must judge them."""
    try:
        df = pl.read_ndjson(io.BytesIO(b"".join(lines)), schema=_SCHEMA)
    except pl.exceptions.PolarsError:  # broken JSON, non-object line, number of the wrong type
        return None
    if df.height != len(lines) or df.height == 0:  # blank lines (skipped by polars) or nothing
        return None
    checks = df.select(
        nulls=pl.any_horizontal(pl.col(_REQUIRED).is_null()).any(),
        untyped=pl.all_horizontal(pl.col(_TAG_FIELDS).is_null()).any(),
        spaces=pl.any_horizontal(pl.col(_TAG_FIELDS).str.contains(_ODD_WHITESPACE)).any(),
        repeated=pl.col("id").is_duplicated().any(),
        # Packed with the tag id into one sort key (see `_sorted_unique_pairs`).
        big_id=((pl.col("id") < 0) | (pl.col("id") >= 1 << 32)).any(),
    ).row(0)
    if any(checks) or _has_non_text_value(df, lines):
        return None
    posts = _post_columns(df)
    if posts["rating"].null_count():
        return None  # not a letter (an integer rating is fine, but rare: per-record path)
    return PostFrame(posts, _tag_mentions(df))


def _has_non_text_value(df: pl.DataFrame, lines: list[bytes]) -> bool:
    suspects = df.select(pl.any_horizontal(pl.col(_TEXT_FIELDS).str.contains(_LOOKS_CONVERTED)).arg_true())
    return any(_NON_TEXT_VALUE.search(lines[i]) for i in suspects.to_series().to_list())


def _post_columns(df: pl.DataFrame) -> pl.DataFrame:
    """The conversions of `_convert` as column expressions (bool null → 0, source null → '')."""
    exprs = []
    for name, kind in _POST_COLUMNS:
        col = pl.col(name)
        if kind == "bool":
            col = col.fill_null(False)
        elif kind == "src":
            col = col.fill_null("")
        elif kind == "rating":
            col = col.replace_strict(_RATINGS, default=None, return_dtype=pl.Int64)
        exprs.append(col)
    # Never updated since creation: the same fill as migration 0002.
    exprs.append(pl.col("updated_at").fill_null(pl.col("created_at")))
    return df.select(exprs).with_row_index("row")


def _tag_mentions(df: pl.DataFrame) -> pl.DataFrame:
    """(row, name, type) per word of each tag string; a post's repeated names are kept here and
    dropped after the name → id mapping, where it is a cheap integer operation."""
    parts = [
        df.select(
            pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
            pl.col(field).fill_null("").str.split(" ").alias("name"),
            pl.lit(_TAG_TYPE_OF_FIELD[k], pl.Int64).alias("type"),
        )
        for k, field in enumerate(_TAG_FIELDS)
    ]
    return pl.concat(parts).explode("name").filter(pl.col("name") != "")


_ROWS_PER_STATEMENT = 500


def insert_flat(conn: sqlite3.Connection, table: str, columns: list[str], flat: list, verb: str = "INSERT") -> None:
    """Insert rows given as one flat list of values (row after row).

    Many rows per INSERT statement: sqlite3's executemany pays ~0.3 µs of Python-side work per
    statement execution, more than sqlite's own cost for a narrow row; 500 rows a statement
    brings 880k relations from ~0.43 s to ~0.17 s on one core.
    """
    width = len(columns)
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per = max(1, min(_ROWS_PER_STATEMENT, limit // width))
    names = ", ".join(f'"{c}"' for c in columns)
    row = "(" + ", ".join("?" * width) + ")"
    chunk = per * width
    full = len(flat) // chunk * chunk
    if full:
        sql = f'{verb} INTO "{table}" ({names}) VALUES ' + ", ".join([row] * per)
        conn.executemany(sql, (flat[i:i + chunk] for i in range(0, full, chunk)))
    if full < len(flat):
        conn.executemany(f'{verb} INTO "{table}" ({names}) VALUES {row}',
                         (flat[i:i + width] for i in range(full, len(flat), width)))


def _sorted_unique_pairs(post: np.ndarray, tag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (post, tag) pairs ordered by tag, then post (post ids are checked < 2**32)."""
    if tag.max(initial=0) >= 1 << 31:  # tag ids this large do not occur; stay exact if they do
        pairs = np.unique(np.stack([tag, post]), axis=1)
        return pairs[1], pairs[0]
    # One int64 key per relation (tag high, post low): a plain sort orders by tag then post,
    # and a name in two strings of one post (or twice in one) becomes an adjacent repeat.
    key = (tag << 32) | post
    key.sort()
    key = key[np.concatenate((key[:1] == key[:1], key[1:] != key[:-1]))]
    return key & 0xFFFFFFFF, key >> 32


def _ints(text: str | None) -> pl.Series:
    """A group_concat of integers → Int64 (NULL: none)."""
    if not text:
        return pl.Series([], dtype=pl.Int64)
    return pl.Series([text]).str.split(",").explode().cast(pl.Int64)


class TagIdCache:
    """name → id of every tag, the tag table read once (one query, ~0.3 s per million tags)
    and kept across the batches of one import, with the tags the import creates appended.
    Tags are never renamed or deleted, so a known pair stays true; names not in it are still
    looked up in the table before being created (another writer may have added them).
    A batch whose transaction fails aborts the import, and the cache with it."""

    def __init__(self) -> None:
        self.known: pl.DataFrame | None = None

    def load(self, conn: sqlite3.Connection) -> pl.DataFrame:
        if self.known is None:
            rows = conn.execute("SELECT name, id FROM tag").fetchall()
            self.known = pl.DataFrame(rows, schema={"name": pl.String, "tag_id": pl.Int64}, orient="row")
        return self.known

    def split(self, conn: sqlite3.Connection, names: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        """(known name → tag_id rows, names not known yet)."""
        frame = names.to_frame("name").join(self.load(conn), on="name", how="left")
        return frame.filter(pl.col("tag_id").is_not_null()), frame.filter(pl.col("tag_id").is_null())["name"]

    def add(self, found: pl.DataFrame) -> None:
        if found.height and self.known is not None:
            self.known = pl.concat([self.known, found.select("name", "tag_id")])


class FrameWriter:
    """Writes a `PostFrame` inside the batch's transaction: new posts only (the bulk case)."""

    def __init__(self, batch: _Batch, cache: TagIdCache) -> None:
        self.batch, self.conn = batch, batch.conn
        self.cache = cache

    def run(self, frame: PostFrame) -> UpsertCounts | None:
        """Write the frame; None means it needs the per-record path (stored versions differ or
        ids repeat) and nothing was written."""
        if not self.batch.has_updated_at:
            return None
        new_rows = self._new_rows(frame.posts)
        if new_rows is None:
            return None
        counts = UpsertCounts(inserted=new_rows.height, unchanged=frame.posts.height - new_rows.height)
        if new_rows.height:
            tags = frame.tags
            if new_rows.height < frame.posts.height:
                tags = tags.filter(pl.col("row").is_in(new_rows["row"].implode()))
            self.write_new(PostFrame(new_rows, tags))
        return counts

    def write_new(self, frame: PostFrame) -> None:
        """Insert posts known not to be stored (and their relations, popularity deltas); the
        parquet snapshot import (`snapshot.py`) decides that itself and calls this directly."""
        post_ids, tag_ids = self._relations(frame.posts, frame.tags)
        self._insert_posts(frame.posts)
        self._insert_relations(post_ids, tag_ids)

    def write_updates(self, frame: PostFrame) -> None:
        """Replace stored posts by newer versions known to be newer (the parquet snapshot import
        decides that): rows rewritten many per statement, relations diffed as whole columns
        (old ones read in one query, both sides anti-joined), popularity moved by the deltas.
        The same rows as the per-record `_Batch` (a stored duplicate (post, tag) row of a tag
        that goes loses one row, the newest, as there)."""
        post_ids, tag_ids = self._relations(frame.posts, frame.tags)
        new = pl.DataFrame({"post_id": post_ids, "tag_id": tag_ids})
        old = self._stored_relations(frame.posts["id"].to_list())
        gone = old.join(new, on=["post_id", "tag_id"], how="anti")
        added = new.join(old, on=["post_id", "tag_id"], how="anti", maintain_order="left")
        columns = [c for c, _ in _POST_COLUMNS] + ["updated_at"]
        flat = list(itertools.chain.from_iterable(frame.posts.select(columns).iter_rows()))
        insert_flat(self.conn, "post", columns, flat, verb="INSERT OR REPLACE")
        if gone.height:
            self.conn.execute("DELETE FROM posttagrelation WHERE id IN (SELECT value FROM json_each(?))",
                              (json.dumps(gone["rel"].to_list()),))
        self._insert_relations(added["post_id"].to_numpy(), added["tag_id"].to_numpy(),
                               minus=gone["tag_id"].to_numpy())

    def _stored_relations(self, post_ids: list[int]) -> pl.DataFrame:
        """(rel, post_id, tag_id) of the stored posts, one row per distinct (post, tag): its
        newest relation id. Three aggregated columns parsed by polars, not a tuple per row."""
        self.batch._need_post_index()
        texts = self.conn.execute(
            "SELECT group_concat(id), group_concat(post_id), group_concat(tag_id) FROM posttagrelation "
            "WHERE post_id IN (SELECT value FROM json_each(?))", (json.dumps(post_ids),)).fetchone()
        columns = {name: _ints(text) for name, text in zip(("rel", "post_id", "tag_id"), texts)}
        return pl.DataFrame(columns).group_by("post_id", "tag_id").agg(pl.col("rel").max())

    def _new_rows(self, posts: pl.DataFrame) -> pl.DataFrame | None:
        """Posts not stored yet; None if a stored one has another `updated_at` (the per-record
        path decides newer/older by instant, not text). Equal text: unchanged, skipped."""
        stored = self.batch._existing(posts["id"].to_list())
        if not stored:
            return posts
        known = pl.DataFrame({"id": list(stored), "stored": list(stored.values())},
                             schema={"id": pl.Int64, "stored": pl.String})
        joined = posts.join(known, on="id", how="left", maintain_order="left")
        if (joined["stored"].is_not_null() & (joined["stored"] != joined["updated_at"])).any():
            return None
        return joined.filter(pl.col("stored").is_null()).drop("stored")

    def _relations(self, posts: pl.DataFrame, tags: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(post ids, tag ids) of all relations, one per distinct (post, tag), sorted by tag then
        post: the deferred tag indexes are then built from long presorted runs (~3x faster)."""
        ids = self._tag_ids(tags)
        tag = tags.select("name").join(ids, on="name", how="left", maintain_order="left")["tag_id"].to_numpy()
        # Post id of each mention by its row in the batch (rows of skipped posts stay 0, unused).
        id_of_row = np.zeros(int(posts["row"].max()) + 1, dtype=np.int64)
        id_of_row[posts["row"].to_numpy()] = posts["id"].to_numpy()
        post = id_of_row[tags["row"].to_numpy()]
        return _sorted_unique_pairs(post, tag)

    def _tag_ids(self, tags: pl.DataFrame) -> pl.DataFrame:
        """name → tag_id for every name of the batch, creating unknown tags (like `_Batch._tag_ids`:
        the type of a post's first string naming it, the last post winning; stored tags keep theirs)."""
        known, unknown = self.cache.split(self.conn, tags["name"].unique())
        if unknown.len():
            stored = self._lookup(unknown.to_list())
            missing = unknown.filter(~unknown.is_in(stored["name"].implode()))
            if missing.len():
                mentions = tags.filter(pl.col("name").is_in(missing.implode()))
                first = mentions.group_by("row", "name").agg(pl.col("type").first())  # k-ordered concat
                # New tags get ids in the order of their first post, then by name: the same ids
                # on every run (a plain group_by's order changes with polars' threads). Ids are
                # given explicitly, as sqlite would (max + 1 each), so nothing is read back.
                new = first.sort("row", "name").group_by("name", maintain_order=True).agg(pl.col("type").last())
                top = self.conn.execute("SELECT max(id) FROM tag").fetchone()[0] or 0
                new = new.with_columns(tag_id=pl.int_range(top + 1, top + 1 + new.height, dtype=pl.Int64))
                rows = new.select("tag_id", "name", "type", popularity=pl.lit(0))
                insert_flat(self.conn, "tag", ["id", "name", "type", "popularity"],
                            list(itertools.chain.from_iterable(rows.iter_rows())))
                stored = pl.concat([stored, new.select("name", "tag_id")])
            self.cache.add(stored)
            known = pl.concat([known, stored])
        return known

    def _lookup(self, names: list[str]) -> pl.DataFrame:
        rows = self.conn.execute(
            "SELECT name, id FROM tag WHERE name IN (SELECT value FROM json_each(?))", (json.dumps(names),)
        ).fetchall()
        return pl.DataFrame(rows, schema={"name": pl.String, "tag_id": pl.Int64}, orient="row")

    def _insert_posts(self, posts: pl.DataFrame) -> None:
        columns = [c for c, _ in _POST_COLUMNS] + ["updated_at"]
        flat = list(itertools.chain.from_iterable(posts.select(columns).iter_rows()))
        insert_flat(self.conn, "post", columns, flat)

    def _insert_relations(self, post_ids: np.ndarray, tag_ids: np.ndarray, minus: np.ndarray | None = None) -> None:
        flat = np.empty(2 * len(post_ids), dtype=np.int64)
        flat[0::2], flat[1::2] = post_ids, tag_ids
        insert_flat(self.conn, "posttagrelation", ["post_id", "tag_id"], flat.tolist())
        # Popularity moves by exactly the relations added and `minus` (the tags of removed ones).
        both = tag_ids if minus is None else np.concatenate([tag_ids, minus])
        sign = np.ones(len(both), dtype=np.int64)
        sign[len(tag_ids):] = -1
        uniq, where = np.unique(both, return_inverse=True)
        delta = np.bincount(where, weights=sign, minlength=len(uniq)).astype(np.int64)
        keep = delta != 0
        self.conn.executemany(
            "UPDATE tag SET popularity = popularity + ? WHERE id = ?", zip(delta[keep].tolist(), uniq[keep].tolist())
        )
