"""The build plan: which files become samples (posts ∩ files, sorted by post id), and what is
refused before any image is opened (file without post, post without file, unsafe tar members).

The plan fixes every post's position: samples are packed in plan order, so shard contents
never depend on which worker finished first.

It is columnar (one polars frame, ~80 bytes a file at 7.8M files instead of ~350 in Python
objects): tasks take column slices (`plan.slice(start, stop)`), and only those few rows become
`PlanItem` objects, in whichever process runs the task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import polars as pl

from kohaku_data.config import Recipe
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.sources import FILES_SCHEMA, Source, SourceEntry, entries_of

_ID_CHUNK = 200_000  # ids per DB read (one JSON parameter: no bound-parameter limit)
_QUERY_CHUNK = 100_000

REJECT_SCHEMA = {"key": pl.Int64, "source": pl.String, "reason": pl.String, "detail": pl.String}
# The source's file columns plus what the DB says the bytes should be: md5 as 16 raw bytes
# (half the memory of its hex text), null when the post has none.
PLAN_SCHEMA: dict[str, pl.DataType] = {**FILES_SCHEMA, "md5": pl.Binary, "file_size": pl.Int64}


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One sample to make: where its bytes are and what the DB says they should be."""

    entry: SourceEntry
    md5: str | None
    file_size: int

    @property
    def key(self) -> int:
        return self.entry.key


@dataclass
class BuildPlan:
    source: Source  # root and containers of the rows (its own file list is not needed after)
    frame: pl.DataFrame  # PLAN_SCHEMA, sorted by key, one row per sample
    rejects: list[dict] = field(default_factory=list)  # rows of REJECT_SCHEMA

    def __len__(self) -> int:
        return self.frame.height

    @property
    def keys(self) -> np.ndarray:
        return self.frame["key"].to_numpy()

    def position_after(self, key: int) -> int:
        """Index of the first row whose key is greater than `key` (where a resume starts)."""
        return int(np.searchsorted(self.keys, key, side="right"))

    def slice(self, start: int, stop: int) -> tuple[PlanItem, ...]:
        """Rows `start:stop` as items (what one task carries)."""
        return items_of(self.source, self.frame.slice(start, max(0, stop - start)))

    def chunks(self, size: int, start: int = 0) -> Iterator[tuple[PlanItem, ...]]:
        for first in range(start, len(self), size):
            yield self.slice(first, first + size)

    @property
    def items(self) -> PlanItems:
        """The rows as a sequence of items, made on demand (`items[a:b]` makes b - a objects)."""
        return PlanItems(self)

    def rejects_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rejects, schema=REJECT_SCHEMA)

    def nbytes(self) -> int:
        """Memory the plan holds (its frame and the containers' names)."""
        return int(self.frame.estimated_size()) + sum(len(c) + 49 for c in self.source.containers)


class PlanItems(Sequence[PlanItem]):
    """A read-only view of a plan's rows as `PlanItem`s, made only for the rows asked for:
    `len`, `items[i]`, `items[a:b]` (a tuple) and iteration (in chunks) never hold the whole
    plan as objects."""

    _CHUNK = 4096

    def __init__(self, plan: BuildPlan) -> None:
        self._plan = plan

    def __len__(self) -> int:
        return len(self._plan)

    @overload
    def __getitem__(self, index: int) -> PlanItem: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[PlanItem, ...]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            items = self._plan.slice(start, stop) if step == 1 else None
            return items if items is not None else tuple(self[i] for i in range(start, stop, step))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._plan.slice(index, index + 1)[0]

    def __iter__(self) -> Iterator[PlanItem]:
        for chunk in self._plan.chunks(self._CHUNK):
            yield from chunk


def items_of(source: Source, frame: pl.DataFrame) -> tuple[PlanItem, ...]:
    entries = entries_of(source, frame)
    md5s = frame["md5"].to_list()
    sizes = frame["file_size"].to_list()
    return tuple(PlanItem(e, None if m is None else m.hex(), s) for e, m, s in zip(entries, md5s, sizes))


def make_plan(db: DanbooruDB, source: Source, recipe: Recipe) -> BuildPlan:
    """Join the source's files with the DB's posts (and the recipe's query, when it has one)."""
    rejects = [_row(None, r.name, r.reason, r.detail) for r in source.rejects]
    posts = read_posts(db, source.files["key"])
    if recipe.query.strip():
        frame = _select(db, recipe.query, join_posts(source, posts, rejects), rejects)
    else:  # every post that has a file, less the deleted ones: what `kdata query ""` selects
        frame = join_posts(source, posts, rejects, hidden=posts.filter(pl.col("deleted")))
    return BuildPlan(source, frame, rejects)


def join_posts(source: Source, posts: pl.DataFrame, rejects: list[dict],
               hidden: pl.DataFrame | None = None) -> pl.DataFrame:
    """Files ∩ posts (`posts`: key, md5, file_size); files without a post become rejects, and
    files of `hidden` posts (deleted ones, which a selection leaves out) are simply not used."""
    joined = source.files.join(posts, on="key", how="left", maintain_order="left")
    if hidden is not None and hidden.height:
        joined = joined.join(hidden.select("key"), on="key", how="anti", maintain_order="left")
    missing = joined.filter(pl.col("file_size").is_null())
    if missing.height:
        named = source._names(missing.select(list(FILES_SCHEMA)))
        for key, name in named.select("key", "name").iter_rows():
            rejects.append(_row(key, name, "file_without_post", "no post with this id in the DB"))
    return joined.filter(pl.col("file_size").is_not_null()).select(list(PLAN_SCHEMA)).rechunk()


def read_posts(db: DanbooruDB, keys: pl.Series) -> pl.DataFrame:
    """md5 (16 raw bytes), file_size and deleted (is_deleted = 1) of the posts among `keys`, read
    in bulk: one string per column and chunk (no Python object per post)."""
    from kohaku_data.captions.frame import parse_ints

    conn = db.connection()
    frames = [pl.DataFrame(schema={"key": pl.Int64, "md5": pl.Binary, "file_size": pl.Int64, "deleted": pl.Boolean})]
    ids = keys.to_numpy()
    for start in range(0, len(ids), _ID_CHUNK):
        wanted = json.dumps(ids[start:start + _ID_CHUNK].tolist())
        found, md5s, sizes, deleted = conn.execute(
            "SELECT group_concat(id), group_concat(ifnull(md5, ''), ','), group_concat(file_size), "
            "group_concat(is_deleted IS 1) "
            "FROM post WHERE id IN (SELECT value FROM json_each(?))", [wanted]).fetchone()
        if not found:
            continue
        frames.append(pl.DataFrame({
            "key": parse_ints(found, "post.id"),
            "md5": pl.Series([md5s]).str.split(",").explode().replace("", None).str.decode("hex", strict=False),
            "file_size": parse_ints(sizes, "post.file_size"),
            "deleted": parse_ints(deleted, "post.is_deleted").astype(bool),
        }))
    return pl.concat(frames).unique("key", keep="first").sort("key")


def _select(db: DanbooruDB, query: str, frame: pl.DataFrame, rejects: list[dict]) -> pl.DataFrame:
    """The rows whose post the query selects. A post the query selects that has no file is a
    reject (`post_without_file`); a file whose post the query does not select is simply not part
    of this dataset."""
    selected = pl.DataFrame({"key": np.unique(np.fromiter(_query_stream(db, query), dtype=np.int64))})
    for pid in selected.join(frame.select("key"), on="key", how="anti")["key"].to_list():
        rejects.append(_row(pid, None, "post_without_file", "the recipe selects this post; no file has its id"))
    return frame.join(selected, on="key", how="semi", maintain_order="left")


def _query_stream(db: DanbooruDB, query: str) -> Iterator[int]:
    from kohaku_data.db.query import query_ids

    if "order:" in query:  # pages follow the query's order, not ids: take the whole list
        yield from query_ids(db, query)
        return
    after: int | None = None
    while True:
        ids = query_ids(db, query, limit=_QUERY_CHUNK, after_id=after)
        yield from ids
        if len(ids) < _QUERY_CHUNK:
            return
        after = max(ids)


def _row(key: int | None, source: str | None, reason: str, detail: str) -> dict:
    return {"key": key, "source": source, "reason": reason, "detail": detail}
