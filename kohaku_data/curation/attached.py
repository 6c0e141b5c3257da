"""`kdata db attach`: a per-post column from outside (an aesthetic score, a waifu-scorer value, a
natural-language caption) stored in kdata tables (migration 0007), and the percentile
thresholds numeric columns give to captions.

Input: a parquet or CSV file with an id column (`id` or `post_id`) and the value column
(`--column`, else the only other column). Numeric dtypes make a `numeric` column, and so do
strings of which most (more than half of the non-blank ones) read as numbers: one stray "n/a" in a
score file must not turn the whole column into text, so the values that are not numbers become
`bad_value` rejects instead (`--kind text` keeps them all as text). Other strings make a `text` one. A rerun with the same name replaces the whole column. Rows refused — the id is not
an integer, no post has it, the id comes twice (later rows), the value is missing, NaN, infinite
or blank — are recorded in `kdata_attached_reject` with their row number (1 = first data row)
and counted; nothing else is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.errors import KdataError

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_ID_COLUMNS = ("id", "post_id")
_ID_CHUNK = 100_000


class AttachError(KdataError):
    """The attach input or name is unusable."""


@dataclass(frozen=True)
class AttachResult:
    name: str
    kind: str  # numeric / text
    posts: int  # values stored
    rejected: int
    reasons: dict[str, int]
    sha256: str
    guessed: bool = False  # the kind came from the values (no --kind)
    bad_examples: tuple[str, ...] = ()  # the first few refused values, as the file had them

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "posts": self.posts, "rejected": self.rejected,
                "reasons": self.reasons, "sha256": self.sha256, "guessed": self.guessed,
                "bad_examples": list(self.bad_examples)}


def attach_column(
    db: DanbooruDB, path: Path, name: str, column: str | None = None, kind: str | None = None,
) -> AttachResult:
    """Store `column` of `path` as the attached column `name` (replacing an older one). `kind`
    (numeric / text) defaults to the column's type: parquet numbers, or CSV values that all
    read as numbers, are numeric."""
    from kohaku_data.db.migrate import migrate
    from kohaku_data.keepers import SUMMARY_KEEPERS

    if not _NAME.match(name):
        raise AttachError(f"--name {name!r}: use a letter then letters, digits or _ (at most 64)")
    frame = _read_input(Path(path))
    id_col, value_col = _columns(frame, path, column)
    guessed = kind is None
    kind = kind or _kind_of(frame[value_col])
    if kind not in ("numeric", "text"):
        raise AttachError(f"--kind {kind!r}: use numeric or text")
    if not (frame[value_col].dtype.is_numeric() or frame[value_col].dtype == pl.String):
        raise AttachError(f"column {value_col!r} of {path} is {frame[value_col].dtype}: attach numbers or text")
    migrate(db, keepers=SUMMARY_KEEPERS)
    rows = _checked_rows(db, frame.select(pl.col(id_col).alias("_id"), pl.col(value_col).alias("_v")), kind)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    good = rows.filter(pl.col("_reason").is_null())
    bad = rows.filter(pl.col("_reason").is_not_null())
    _store(db, name, kind, str(path), digest, good, bad)
    reasons = dict(sorted(bad.group_by("_reason").len().iter_rows()))
    examples = tuple(bad.filter(pl.col("_reason") == "bad_value")["_raw_v"].head(3).fill_null("(empty)"))
    return AttachResult(name, kind, good.height, bad.height, reasons, digest, guessed, examples)


def _kind_of(values: pl.Series) -> str:
    """numeric when the dtype is, or when more than half of the non-blank strings read as numbers."""
    if values.dtype.is_numeric():
        return "numeric"
    filled = values.str.strip_chars().replace("", None).drop_nulls()
    numbers = filled.len() - filled.cast(pl.Float64, strict=False).null_count()
    return "numeric" if filled.len() and 2 * numbers > filled.len() else "text"


def _read_input(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise AttachError(f"{path} does not exist: give a .parquet or .csv file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix == ".csv":
            return pl.read_csv(path, infer_schema=False)  # text; the kind is decided per column
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise AttachError(f"cannot read {path} ({exc}): fix the file and rerun") from None
    raise AttachError(f"{path}: attach reads .parquet or .csv files")


def _columns(frame: pl.DataFrame, path: Path, column: str | None) -> tuple[str, str]:
    ids = [c for c in _ID_COLUMNS if c in frame.columns]
    if not ids:
        raise AttachError(f"{path} has no id column: name the post id column `id` or `post_id`")
    others = [c for c in frame.columns if c != ids[0]]
    if column is None:
        if len(others) != 1:
            raise AttachError(f"{path} has columns {others}: choose one with --column")
        column = others[0]
    if column not in others:
        raise AttachError(f"{path} has no column {column!r}; it has {others}")
    return ids[0], column


def _checked_rows(db: DanbooruDB, frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    """Input rows with `_row` (1-based), `_id` (Int64 or null), `_v` and `_reason` (null = good)."""
    frame = frame.with_row_index("_row", offset=1).with_columns(
        _raw_id=pl.col("_id").cast(pl.String), _id=pl.col("_id").cast(pl.Int64, strict=False),
        _raw_v=pl.col("_v").cast(pl.String),  # what a reject records: the value as the file had it
    )
    if kind == "numeric":
        value = pl.col("_v").cast(pl.Float64, strict=False) if frame["_v"].dtype.is_numeric() else \
            pl.col("_v").str.strip_chars().cast(pl.Float64, strict=False)
        bad_value = value.is_null() | value.is_nan() | value.is_infinite()
    else:
        value = pl.col("_raw_v")  # numbers attached as text keep their written form
        bad_value = value.is_null() | (value.str.strip_chars() == "")
    frame = frame.with_columns(_v=value, _bad=bad_value)
    known = _known_ids(db, frame["_id"].drop_nulls().unique().sort().to_numpy())
    frame = frame.join(pl.DataFrame({"_id": known, "_known": True}), on="_id", how="left", maintain_order="left")
    reason = (
        pl.when(pl.col("_id").is_null()).then(pl.lit("bad_id"))
        .when(pl.col("_known").is_null()).then(pl.lit("unknown_post"))
        .when(pl.col("_id").is_first_distinct().not_()).then(pl.lit("duplicate_id"))
        .when(pl.col("_bad")).then(pl.lit("bad_value"))
    )
    return frame.with_columns(_reason=reason).drop("_bad", "_known")


def _known_ids(db: DanbooruDB, ids: np.ndarray) -> pl.Series:
    conn = db.connection()
    found: list[int] = []
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = json.dumps(ids[start:start + _ID_CHUNK].tolist())
        found += [r[0] for r in conn.execute("SELECT id FROM post WHERE id IN (SELECT value FROM json_each(?))", (chunk,))]
    return pl.Series(found, dtype=pl.Int64)


def _store(db: DanbooruDB, name: str, kind: str, source: str, digest: str, good: pl.DataFrame, bad: pl.DataFrame) -> None:
    conn = db.connection()
    column = "num" if kind == "numeric" else "txt"
    values = good.select("_id", "_v").sort("_id").iter_rows()
    rejects = bad.select("_row", "_raw_id", "_reason", "_raw_v").iter_rows()
    with db.database.atomic():
        conn.execute('DELETE FROM "kdata_attached_value" WHERE "name" = ?', (name,))
        conn.execute('DELETE FROM "kdata_attached_reject" WHERE "name" = ?', (name,))
        conn.executemany(f'INSERT INTO "kdata_attached_value" ("name", "post_id", "{column}") VALUES (?, ?, ?)',
                         ((name, pid, v) for pid, v in values))
        conn.executemany('INSERT INTO "kdata_attached_reject" VALUES (?, ?, ?, ?, ?)',
                         ((name, row, pid, reason, v) for row, pid, reason, v in rejects))
        conn.execute('INSERT OR REPLACE INTO "kdata_attached_column" VALUES (?, ?, ?, ?, ?, ?)',
                     (name, kind, source, digest, good.height, bad.height))


# ---------------------------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------------------------
def attached_columns(db: DanbooruDB) -> dict[str, dict[str, Any]]:
    """name → {kind, source, sha256, posts, rejected} of every attached column."""
    if not db.has_table("kdata_attached_column"):
        return {}
    rows = db.connection().execute('SELECT name, kind, source, sha256, posts, rejected FROM "kdata_attached_column"')
    return {r[0]: dict(zip(("kind", "source", "sha256", "posts", "rejected"), r[1:])) for r in rows}


def require_column(db: DanbooruDB, name: str, kind: str) -> dict[str, Any]:
    info = attached_columns(db).get(name)
    if info is None:
        raise AttachError(f"the DB has no attached column {name!r}: add it with `kdata db attach FILE --name {name}`")
    if info["kind"] != kind:
        raise AttachError(f"attached column {name!r} is {info['kind']}, the recipe uses it as {kind}")
    return info


def numeric_values(db: DanbooruDB, name: str) -> pl.DataFrame:
    """post_id, value, and the post's rating and created_at, of every value of a numeric column,
    by post id."""
    rows = db.connection().execute(
        'SELECT v.post_id, v.num, p.rating, p.created_at FROM "kdata_attached_value" v '
        'JOIN post p ON p.id = v.post_id WHERE v.name = ? ORDER BY v.post_id', (name,),
    ).fetchall()
    schema = {"post_id": pl.Int64, "value": pl.Float64, "rating": pl.Int64, "created_at": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")


def text_values(conn: Any, name: str, first: int, last: int) -> pl.DataFrame:
    """post_id, text of a text column for posts first..last (one primary-key range read)."""
    rows = conn.execute(
        'SELECT post_id, txt FROM "kdata_attached_value" WHERE name = ? AND post_id BETWEEN ? AND ?',
        (name, first, last),
    ).fetchall()
    return pl.DataFrame(rows, schema={"id": pl.Int64, "text": pl.String}, orient="row")
