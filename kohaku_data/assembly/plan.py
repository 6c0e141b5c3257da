"""The build plan: which files become samples (posts ∩ files, sorted by post id), and what is
refused before any image is opened (file without post, post without file, unsafe tar members).

The plan fixes every post's position: samples are packed in plan order, so shard contents
never depend on which worker finished first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl

from kohaku_data.config import Recipe
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.sources import Source, SourceEntry

# sqlite allows 32766 bound parameters since 3.32; stay well below.
_ID_CHUNK = 10_000
_QUERY_CHUNK = 100_000

REJECT_SCHEMA = {"key": pl.Int64, "source": pl.String, "reason": pl.String, "detail": pl.String}


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
    items: list[PlanItem]  # sorted by key, one per post
    rejects: list[dict] = field(default_factory=list)  # rows of REJECT_SCHEMA

    def rejects_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rejects, schema=REJECT_SCHEMA)


def make_plan(db: DanbooruDB, source: Source, recipe: Recipe) -> BuildPlan:
    """Join the source's files with the DB's posts (and the recipe's query, when it has one)."""
    rejects = [_row(None, r.name, r.reason, r.detail) for r in source.rejects]
    entries = source.entries()
    posts = _posts_of(db, [e.key for e in entries])
    items: list[PlanItem] = []
    for entry in entries:
        post = posts.get(entry.key)
        if post is None:
            rejects.append(_row(entry.key, entry.name, "file_without_post", "no post with this id in the DB"))
        else:
            items.append(PlanItem(entry, post[0], post[1]))
    if recipe.query.strip():
        items = _select(db, recipe.query, items, rejects)
    return BuildPlan(items, rejects)


def _posts_of(db: DanbooruDB, keys: list[int]) -> dict[int, tuple[str | None, int]]:
    """md5 and file_size of the posts among `keys` (chunked IN queries: bounded statements)."""
    conn = db.connection()
    found: dict[int, tuple[str | None, int]] = {}
    for start in range(0, len(keys), _ID_CHUNK):
        chunk = keys[start:start + _ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        for pid, md5, size in conn.execute(f"SELECT id, md5, file_size FROM post WHERE id IN ({marks})", chunk):
            found[pid] = (md5, size)
    return found


def _select(db: DanbooruDB, query: str, items: list[PlanItem], rejects: list[dict]) -> list[PlanItem]:
    """Merge-join the query's ids (streamed in id order) with the files' keys.

    A post the query selects that has no file is a reject (`post_without_file`); a file whose
    post the query does not select is simply not part of this dataset.
    """
    kept: list[PlanItem] = []
    pos = 0
    for pid in _query_stream(db, query):
        while pos < len(items) and items[pos].key < pid:
            pos += 1
        if pos < len(items) and items[pos].key == pid:
            kept.append(items[pos])
        else:
            rejects.append(_row(pid, None, "post_without_file", "the recipe selects this post; no file has its id"))
    return kept


def _query_stream(db: DanbooruDB, query: str) -> Iterator[int]:
    from kohaku_data.db.query import query_ids

    if "order:" in query:  # pages follow the query's order, not ids: take the whole list
        yield from sorted(query_ids(db, query))
        return
    after: int | None = None
    while True:
        ids = query_ids(db, query, limit=_QUERY_CHUNK, after_id=after)
        yield from sorted(ids)
        if len(ids) < _QUERY_CHUNK:
            return
        after = max(ids)


def _row(key: int | None, source: str | None, reason: str, detail: str) -> dict:
    return {"key": key, "source": source, "reason": reason, "detail": detail}
