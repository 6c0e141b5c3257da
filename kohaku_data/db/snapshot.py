"""Import the public Danbooru parquet snapshots (`kdata db import FILE.parquet`), a row group at a time.

The file is read by pyarrow a batch at a time (only the columns kdata uses, pages streamed:
memory stays bounded at any size), its columns renamed by `snapshot_shapes.recognise`, coerced
as whole columns by polars, and written through the JSONL importer's writers: new posts by its
columnar `FrameWriter`, newer versions of stored posts by its per-record `_Batch` (relation
diffs, popularity deltas). So the same posts give the same rows from either format.

Policies (explicit, recorded with the file's provenance, `SnapshotPolicy.as_dict`):
- NULL `is_deleted` (danbooru2026: 1.74M rows in id blocks where `uploader_id`, `is_banned`…
  are NULL too, a batch artefact, not deletion): stored as not deleted and listed in
  `kdata_post_unknown`; `null_deleted="drop"` rejects those rows instead.
- Any other published NOT NULL field that is NULL (`uploader_id`, `is_banned`, `file_size`,
  `image_width` of a post without image…): stored as 0 / '' and listed in `kdata_post_unknown`.
  A row without id, created_at or a known rating is a reject.
- A field the file lacks altogether: its default for every row, named in the provenance.
- Repeated ids: the newest `updated_at` wins (compared as instants); every other row of that id
  is a reject saying which row won.
- Posts without md5 / file_url are imported as they are (builds reject them as `no_file`).
- Deleted posts are kept (`is_deleted` = 1), as in the JSONL import.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from kohaku_data.db.columnar import FrameWriter, PostFrame, TagIdCache, _tag_mentions
from kohaku_data.db.enums import _RATING_WORDS, TAG_STRING_FIELDS
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.records import _POST_COLUMNS, InputFileError, RecordError
from kohaku_data.db.snapshot_shapes import POST_FIELD_KINDS, REJECT_IF_NULL, Shape, pandas_index, recognise
from kohaku_data.db.tag_rows import TagCounts, parse_tag_row, upsert_tags
from kohaku_data.db.upsert import UNKNOWN_TABLE, UpsertCounts, _Batch

RejectFn = Callable[[int, str, Any], None]  # (row number, reason, record)
_TYPED = tuple(TAG_STRING_FIELDS)
_POST_NAMES = [name for name, _ in _POST_COLUMNS]
_DEFAULTS = {"int": 0, "bool": 0, "str": "", "src": ""}  # NOT NULL kinds: what a NULL becomes
_ODD_WHITESPACE = r"[^\S ]|[\x1c-\x1f]"  # what str.split() splits on besides " " (see columnar.py)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.3f%:z"


@dataclass(frozen=True)
class SnapshotPolicy:
    """The choices a snapshot import makes where the published schema and the data disagree."""

    null_deleted: Literal["keep", "drop"] = "keep"

    def as_dict(self, shape: Shape | None = None) -> dict[str, Any]:
        policies: dict[str, Any] = {
            "null_is_deleted": "kept as not deleted, listed in kdata_post_unknown"
            if self.null_deleted == "keep" else "dropped (rejected)",
            "null_not_null_fields": "stored as 0 / '' and listed in kdata_post_unknown",
            "duplicate_ids": "newest updated_at wins; other rows rejected",
            "rows_without_file": "imported (builds reject them as no_file)",
            "deleted_posts": "kept (is_deleted = 1)",
        }
        if shape is not None and shape.absent:
            policies["absent_columns"] = list(shape.absent)
        return policies


def is_parquet(head: bytes) -> bool:
    return head[:4] == b"PAR1"


def open_snapshot(path: Path) -> tuple[Any, Shape]:
    """(pyarrow ParquetFile, its Shape); a file pyarrow cannot read is one sentence."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise InputFileError(f"{path} is not a parquet file kdata can read: {exc}") from None
    schema = pf.schema_arrow
    return pf, recognise(path.name, list(schema.names), pandas_index(schema.metadata))


def row_count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def read_batches(pf: Any, shape: Shape, batch_size: int) -> Iterator[pl.DataFrame]:
    """The file's rows `batch_size` at a time, columns renamed to kdata's field names."""
    wanted = list(dict.fromkeys(shape.columns.values()))
    for batch in pf.iter_batches(batch_size=batch_size, columns=wanted, use_pandas_metadata=False):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield frame.select(pl.col(src).alias(name) for name, src in shape.columns.items())


# --------------------------------------------------------------------------------------------
# Whole-column coercion: one expression per field, plus a reason where a value is unusable
# --------------------------------------------------------------------------------------------
def _unusable(name: str, col: pl.Expr, value: pl.Expr, want: str) -> pl.Expr:
    return pl.when(col.is_not_null() & value.is_null()).then(
        pl.format(f"field '{name}' must be {want}, got {{}}", col.cast(pl.String))
    )


def _coerce(name: str, kind: str, dtype: pl.DataType) -> tuple[pl.Expr, pl.Expr | None]:
    """(converted value, reason or null) for one present column."""
    col = pl.col(name)
    if dtype.is_float():
        col = pl.when(col.is_nan()).then(None).otherwise(col)  # pandas writes a missing int as NaN
    if kind in ("int", "int?"):
        if dtype.is_float():
            exact = (col == col.round()) & (col.abs() < 2.0 ** 53)
            value = pl.when(exact).then(col.cast(pl.Int64, strict=False))
        else:
            value = col.cast(pl.Int64, strict=False)
        return value, _unusable(name, col, value, "an integer")
    if kind == "bool":
        if dtype == pl.Boolean:
            return col.cast(pl.Int64), None
        value = pl.when(col.cast(pl.Float64, strict=False).is_in([0.0, 1.0])).then(col.cast(pl.Int64, strict=False))
        return value, _unusable(name, col, value, "true or false")
    if kind == "rating":
        if dtype.is_integer() or dtype.is_float():
            value = pl.when(col.is_in([0, 1, 2, 3])).then(col.cast(pl.Int64, strict=False))
        else:
            value = col.cast(pl.String).str.strip_chars().str.to_lowercase().replace_strict(
                _RATING_WORDS, default=None, return_dtype=pl.Int64)
        reason = pl.when(col.is_not_null() & value.is_null()).then(
            pl.format("unknown rating {}: expected one of g, s, q, e", col.cast(pl.String)))
        return value, reason
    if kind in ("time", "time?"):
        if isinstance(dtype, pl.Datetime):
            aware = col if dtype.time_zone else col.dt.replace_time_zone("UTC")
            return aware.dt.to_string(_TIME_FORMAT), None
        text = col.cast(pl.String)
        reason = pl.when(text.is_not_null() & _instant(text).is_null()).then(
            pl.format(f"field '{name}' is not an ISO-8601 timestamp: {{}}", text))
        return text, reason
    value = col.cast(pl.String, strict=False)
    return value, _unusable(name, col, value, "a string")


def _instant(text: pl.Expr) -> pl.Expr:
    """ISO-8601 text with any offset → the instant (UTC), null where it does not parse."""
    return text.str.to_datetime(time_zone="UTC", time_unit="us", strict=False)


def convert(raw: pl.DataFrame, shape: Shape, first_row: int, policy: SnapshotPolicy) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(usable rows, rejected rows) of one batch.

    Usable rows: the post columns in published order, updated_at, the five tag strings, `row`
    (file row number, from 1), `_ut` (updated_at as an instant), `_unknown` (NULL NOT NULL fields).
    Rejected rows: `row`, `id`, `reason`, and the raw fields as text.
    """
    values, reasons = [], []
    for name, kind in POST_FIELD_KINDS.items():
        if name in raw.columns:
            value, reason = _coerce(name, kind, raw.schema[name])
            values.append(value.alias(name))
            if reason is not None:
                reasons.append(reason)
        else:
            values.append(pl.lit(None, _value_dtype(kind)).alias(name))
    df = raw.select(
        *values,
        pl.int_range(first_row, first_row + raw.height, dtype=pl.Int64).alias("row"),
        pl.coalesce(reasons).alias("_reason") if reasons else pl.lit(None, pl.String).alias("_reason"),
    )
    df = df.with_columns(_ut=_instant(pl.coalesce("updated_at", "created_at")))
    checks = [pl.col("_reason")]  # an unusable value first: its converted value is NULL too
    checks += [pl.when(pl.col(f).is_null()).then(pl.lit(f"missing field '{f}'")) for f in REJECT_IF_NULL]
    checks.append(pl.when((pl.col("id") < 0) | (pl.col("id") >= 1 << 32)).then(
        pl.format("id {} is out of range (0 to 2**32 - 1)", pl.col("id"))))
    if policy.null_deleted == "drop":
        checks.append(pl.when(pl.col("is_deleted").is_null() & pl.lit("is_deleted" in raw.columns)).then(
            pl.lit("is_deleted is NULL (policy: drop such rows)")))
    df = df.with_columns(_reason=pl.coalesce(checks))
    bad = df.filter(pl.col("_reason").is_not_null())
    rejected = bad.select("row", "id", pl.col("_reason").alias("reason")).with_columns(
        record=raw.filter(df["_reason"].is_not_null()).select(pl.all().cast(pl.String, strict=False)).to_struct()
    ) if bad.height else pl.DataFrame(schema={"row": pl.Int64, "id": pl.Int64, "reason": pl.String})
    good = df.filter(pl.col("_reason").is_null()).drop("_reason")
    return _filled(good, [n for n in raw.columns if n in POST_FIELD_KINDS]), rejected


def _value_dtype(kind: str) -> pl.DataType:
    return pl.Int64() if kind in ("int", "int?", "bool", "rating") else pl.String()


def _filled(df: pl.DataFrame, present: list[str]) -> pl.DataFrame:
    """NOT NULL fields: NULL → default, named in `_unknown` when the file has the column;
    updated_at NULL → created_at; untyped rows' tag_string → tag_string_general."""
    not_null = [(n, k) for n, k in _POST_COLUMNS if k in _DEFAULTS]
    unknown = [pl.when(pl.col(n).is_null()).then(pl.lit(n)) for n, _ in not_null if n in present]
    untyped = pl.all_horizontal(pl.col(_TYPED).is_null())
    tags = [pl.col(f) for f in _TYPED]
    tags[0] = pl.when(untyped).then(pl.col("tag_string")).otherwise(pl.col(_TYPED[0]))
    df = df.with_columns(
        *(pl.col(n).fill_null(_DEFAULTS[k]) for n, k in not_null),
        *(t.fill_null("").alias(f) for t, f in zip(tags, _TYPED)),
        updated_at=pl.coalesce("updated_at", "created_at"),
        _unknown=pl.concat_str(unknown, separator=",", ignore_nulls=True) if unknown else pl.lit(None, pl.String),
    ).with_columns(_unknown=pl.when(pl.col("_unknown") != "").then(pl.col("_unknown")))
    odd = df.select(pl.any_horizontal(pl.col(_TYPED).str.contains(_ODD_WHITESPACE)).any()).item()
    if odd:  # Python's str.split() splits on these too: make the columnar split agree
        df = df.with_columns(pl.col(_TYPED).str.replace_all(_ODD_WHITESPACE, " "))
    return df.drop("tag_string")


# --------------------------------------------------------------------------------------------
# Writing one batch: duplicates, new vs newer vs unchanged, the two writers, unknown fields
# --------------------------------------------------------------------------------------------
class SeenIds:
    """Ids already met in this file (a bitmap by id: 12M ids → 12 MB)."""

    def __init__(self) -> None:
        self.seen = np.zeros(0, dtype=bool)

    def check_and_mark(self, ids: np.ndarray) -> np.ndarray:
        top = int(ids.max(initial=-1)) + 1
        if top > len(self.seen):
            grown = np.zeros(max(top, 2 * len(self.seen)), dtype=bool)
            grown[:len(self.seen)] = self.seen
            self.seen = grown
        before = self.seen[ids].copy()
        self.seen[ids] = True
        return before


def newest_per_id(df: pl.DataFrame, on_reject: RejectFn) -> pl.DataFrame:
    """One row per id: the newest `_ut` (then the first row); the others are rejects."""
    ordered = df.sort(["id", "_ut", "row"], descending=[False, True, False], nulls_last=True)
    first = ordered["id"].is_first_distinct()
    if first.all():
        return df
    winners = ordered.filter(first)
    losers = ordered.filter(~first).join(
        winners.select("id", pl.col("row").alias("won"), pl.col("updated_at").alias("won_at")), on="id")
    for row, post_id, updated_at, won, won_at in losers.select("row", "id", "updated_at", "won", "won_at").iter_rows():
        on_reject(row, f"duplicate id {post_id}: row {won} has the newest updated_at ({won_at})",
                  {"id": post_id, "updated_at": updated_at})
    return winners.sort("row")


class SnapshotWriter:
    """Writes converted batches of one file (each inside its own transaction)."""

    def __init__(self, db: DanbooruDB, on_reject: RejectFn) -> None:
        self.db, self.conn = db, db.connection()
        self.cache = TagIdCache()
        self.seen = SeenIds()
        self.on_reject = on_reject
        self.track_unknown = db.has_table(UNKNOWN_TABLE)
        self.frame_writer: FrameWriter | None = None  # one per file: the post_id index is checked once

    def write(self, df: pl.DataFrame) -> UpsertCounts:
        df = newest_per_id(df, self.on_reject)
        repeated = self.seen.check_and_mark(df["id"].to_numpy())
        with self.db.database.atomic():
            df = df.join(self._stored(df["id"].to_list()), on="id", how="left", maintain_order="left")
            newer = pl.col("stored").is_not_null() & (
                _instant(pl.col("stored")).is_null() | (pl.col("_ut") > _instant(pl.col("stored"))))
            df = df.with_columns(_new=pl.col("stored").is_null(), _newer=newer,
                                 _repeat=pl.Series(repeated))
            self._reject_repeats(df.filter(pl.col("_repeat")))
            new = df.filter(pl.col("_new"))
            updated = df.filter(pl.col("_newer"))
            if new.height:
                self._insert(new)
            if updated.height:
                self._update(updated)
            self._note_unknown(new, updated)
        unchanged = df.filter(~pl.col("_new") & ~pl.col("_newer") & ~pl.col("_repeat")).height
        return UpsertCounts(inserted=new.height, updated=updated.height, unchanged=unchanged)

    def _stored(self, ids: list[int]) -> pl.DataFrame:
        rows = self.conn.execute(
            "SELECT id, updated_at FROM post WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
        ).fetchall()
        return pl.DataFrame(rows, schema={"id": pl.Int64, "stored": pl.String}, orient="row")

    def _reject_repeats(self, repeats: pl.DataFrame) -> None:
        """An id met in an earlier batch of this file: the newer of the two stays."""
        for row, post_id, updated_at, stored, newer in repeats.select(
            "row", "id", "updated_at", "stored", "_newer").iter_rows():
            if newer:
                self.on_reject(row, f"duplicate id {post_id}: an earlier row (updated_at {stored}) was replaced "
                                    f"by row {row}, which is newer", {"id": post_id, "updated_at": stored})
            else:
                self.on_reject(row, f"duplicate id {post_id}: an earlier row (updated_at {stored}) is as new or newer",
                               {"id": post_id, "updated_at": updated_at})

    def _insert(self, new: pl.DataFrame) -> None:
        self._writer().write_new(_frame(new))

    def _update(self, updated: pl.DataFrame) -> None:
        self._writer().write_updates(_frame(updated))

    def _writer(self) -> FrameWriter:
        if self.frame_writer is None:
            self.frame_writer = FrameWriter(_Batch(self.db, self.conn), self.cache)
        return self.frame_writer

    def _note_unknown(self, new: pl.DataFrame, updated: pl.DataFrame) -> None:
        if not self.track_unknown:
            return
        if updated.height:
            self.conn.execute(f'DELETE FROM "{UNKNOWN_TABLE}" WHERE post_id IN (SELECT value FROM json_each(?))',
                              (json.dumps(updated["id"].to_list()),))
        rows = pl.concat([new.select("id", "_unknown"), updated.select("id", "_unknown")]).drop_nulls()
        if rows.height:
            self.conn.executemany(f'INSERT OR REPLACE INTO "{UNKNOWN_TABLE}" (post_id, fields) VALUES (?, ?)',
                                  rows.iter_rows())


def _frame(df: pl.DataFrame) -> PostFrame:
    """Converted rows as the columnar writer's frame (posts in published order + `row`, tag mentions)."""
    return PostFrame(df.select(*_POST_NAMES, "updated_at").with_row_index("row"), _tag_mentions(df))


# --------------------------------------------------------------------------------------------
# A whole file
# --------------------------------------------------------------------------------------------
@dataclass
class SnapshotResult:
    shape: Shape
    rows: int
    posts: UpsertCounts
    tags: TagCounts


def import_snapshot(
    db: DanbooruDB, path: Path, on_reject: RejectFn, *, batch_size: int, policy: SnapshotPolicy,
    progress: Callable[[float], None] = lambda fraction: None,
) -> SnapshotResult:
    """Import one parquet snapshot (posts or tags); each batch is one transaction."""
    pf, shape = open_snapshot(path)
    total = max(pf.metadata.num_rows, 1)
    result = SnapshotResult(shape, 0, UpsertCounts(), TagCounts())
    writer = SnapshotWriter(db, on_reject)
    for raw in read_batches(pf, shape, batch_size):
        first = result.rows + 1
        result.rows += raw.height
        if shape.kind == "tags":
            result.tags.add(_write_tags(db, raw, first, on_reject))
        else:
            good, rejected = convert(raw, shape, first, policy)
            for row, _, reason, record in rejected.iter_rows():
                on_reject(row, reason, record)
            if good.height:
                result.posts.add(writer.write(good))
        progress(result.rows / total)
    return result


def _write_tags(db: DanbooruDB, raw: pl.DataFrame, first: int, on_reject: RejectFn) -> TagCounts:
    """Tag rows (name, Danbooru category 0/1/3/4/5, post_count) through the tag CSV's parser."""
    text = raw.select(
        pl.col("name").cast(pl.String),
        pl.col("category").cast(pl.Int64, strict=False).cast(pl.String).fill_null(""),
        (pl.col("post_count").cast(pl.Int64, strict=False) if "post_count" in raw.columns else pl.lit(0))
        .cast(pl.String).fill_null("0").alias("post_count"),
    )
    parsed = []
    for offset, row in enumerate(text.iter_rows()):
        try:
            parsed.append(parse_tag_row([row[0] or "", row[1], row[2]]))
        except RecordError as exc:
            on_reject(first + offset, exc.reason, dict(zip(text.columns, row)))
    return upsert_tags(db, parsed) if parsed else TagCounts()


def unknown_fields(conn: sqlite3.Connection, post_id: int) -> list[str]:
    """The published fields of a post that its source left NULL (stored as defaults)."""
    row = conn.execute(f'SELECT fields FROM "{UNKNOWN_TABLE}" WHERE post_id = ?', (post_id,)).fetchone()
    return row[0].split(",") if row else []
