"""Write parsed posts: per-record idempotent upserts in one transaction per batch.

A newer `updated_at` replaces a post's fields and its tag set; the same or an older version
changes nothing. `tag.popularity` is adjusted by each batch's deltas (never recounted), so it
always equals the number of relation rows of the tag.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


from kohaku_data.db.enums import TagType
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.records import _POST_COLUMNS, InputFileError, ParsedPost, _is_newer, parse_post


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, other: "UpsertCounts") -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged


# --------------------------------------------------------------------------------------------
# upsert
# --------------------------------------------------------------------------------------------
def upsert_posts(db: DanbooruDB, posts: Iterable[dict]) -> UpsertCounts:
    """Insert new posts, replace posts whose `updated_at` is newer, leave the rest alone.

    All records are validated first (a bad one raises `RecordError` and nothing is written),
    then the whole batch is written in one transaction.
    """
    return write_parsed(db, [parse_post(p) for p in posts])


def write_parsed(db: DanbooruDB, parsed: list[ParsedPost]) -> UpsertCounts:
    """Write already validated posts in one transaction (see `upsert_posts`)."""
    _require_writable(db)
    if not parsed:
        return UpsertCounts()
    conn = db.connection()
    with db.database.atomic():
        return _Batch(db, conn).run(parsed)


def _require_writable(db: DanbooruDB) -> None:
    if db.readonly:
        raise InputFileError(f"{db.path} is open read-only: open it with readonly=False to import")


def _json_ids(values: Iterable) -> str:
    return json.dumps(list(values))


UNKNOWN_TABLE = "kdata_post_unknown"  # migration 0012: published fields a source left NULL


def forget_unknown(db: DanbooruDB, conn: sqlite3.Connection, post_ids: list[int]) -> None:
    """Drop the `kdata_post_unknown` rows of posts about to be rewritten (no-op before 0012)."""
    if post_ids and db.has_table(UNKNOWN_TABLE):
        conn.execute(f'DELETE FROM "{UNKNOWN_TABLE}" WHERE post_id IN (SELECT value FROM json_each(?))',
                     (_json_ids(post_ids),))


class _Batch:
    """One transaction's worth of upserts: decide, then write posts, relations, popularity."""

    def __init__(self, db: DanbooruDB, conn: sqlite3.Connection) -> None:
        self.db, self.conn = db, conn
        self.has_updated_at = db.has_updated_at
        self.counts = UpsertCounts()
        self.post_index_checked = False

    def run(self, parsed: list[ParsedPost]) -> UpsertCounts:
        """Write the batch (inside the caller's transaction)."""
        final, action = self._decide(parsed)
        if not final:
            return self.counts
        tag_ids = self._tag_ids(final.values())
        old_rel = self._old_relations([pid for pid, a in action.items() if a == "update"])
        self._write_posts(final, action)
        self._write_relations(final, tag_ids, old_rel)
        return self.counts

    # -- decide -----------------------------------------------------------------------------
    def _decide(self, parsed: list[ParsedPost]) -> tuple[dict[int, ParsedPost], dict[int, str]]:
        """Which posts to insert or update; counts every record as if applied in order."""
        existing = self._existing([p.id for p in parsed])
        final: dict[int, ParsedPost] = {}
        action: dict[int, str] = {}
        current: dict[int, ParsedPost] = {}  # latest version seen in this batch
        for post in parsed:
            earlier = current.get(post.id)
            if earlier is not None:
                newer = _is_newer(post.updated_at, earlier.updated_at)
            elif post.id in existing:
                newer = self._replaces(post, existing[post.id])
            else:
                newer = None  # not in the DB: an insert
            if newer is False:
                self.counts.unchanged += 1
                continue
            if newer is None:
                self.counts.inserted += 1
            else:
                self.counts.updated += 1
            current[post.id] = post
            final[post.id] = post
            action[post.id] = "insert" if action.get(post.id) == "insert" or newer is None else "update"
        return final, action

    def _existing(self, ids: list[int]) -> dict[int, Any]:
        """id → stored updated_at (or, in files without the column, the stored row and tags)."""
        if self.has_updated_at:
            cur = self.conn.execute(
                "SELECT id, updated_at FROM post WHERE id IN (SELECT value FROM json_each(?))",
                (_json_ids(ids),),
            )
            return dict(cur.fetchall())
        # No updated_at to compare: a record replaces the stored post only if it differs.
        names = ", ".join(f'"{c}"' for c, _ in _POST_COLUMNS)
        self._need_post_index()
        rows = self.conn.execute(
            f"SELECT {names} FROM post WHERE id IN (SELECT value FROM json_each(?))", (_json_ids(ids),)
        ).fetchall()
        stored = {r[0]: (r, set()) for r in rows}
        for post_id, tag_name in self.conn.execute(
            "SELECT r.post_id, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
            "WHERE r.post_id IN (SELECT value FROM json_each(?))", (_json_ids(stored),)
        ):
            stored[post_id][1].add(tag_name)
        return stored

    def _replaces(self, post: ParsedPost, stored: Any) -> bool:
        if self.has_updated_at:
            return _is_newer(post.updated_at, stored)
        row, tags = stored
        return tuple(row) != post.row[:-1] or tags != set(post.tags)

    def _need_post_index(self) -> None:
        """A bulk import defers `posttagrelation_post_id` too; reading a stored post's relations
        without it would scan the whole table, so rebuild it (once) the first time it is needed."""
        from kohaku_data.db.migrate import restore_deferred_indexes

        if not self.post_index_checked:
            restore_deferred_indexes(self.db, {"posttagrelation_post_id"})
            self.post_index_checked = True

    # -- tags -------------------------------------------------------------------------------
    def _tag_ids(self, posts: Iterable[ParsedPost]) -> dict[str, int]:
        """name → tag id for every tag of the batch, creating unknown tags with their type."""
        wanted: dict[str, TagType | None] = {}
        untyped = []
        for post in posts:
            if post.tags and next(iter(post.tags.values())) is None:
                untyped.append(post)
            else:
                wanted.update(post.tags)
        for post in untyped:  # typed mentions win over untyped ones
            for name in post.tags:
                wanted.setdefault(name, None)
        ids = dict(self.conn.execute(
            "SELECT name, id FROM tag WHERE name IN (SELECT value FROM json_each(?))",
            (json.dumps(list(wanted)),),
        ).fetchall())
        missing = [(n, int(t if t is not None else TagType.GENERAL)) for n, t in wanted.items() if n not in ids]
        if missing:
            # Existing tags keep their type (a tag CSV import is the place to recategorise).
            self.conn.executemany("INSERT INTO tag (name, type, popularity) VALUES (?, ?, 0)", missing)
            ids.update(self.conn.execute(
                "SELECT name, id FROM tag WHERE name IN (SELECT value FROM json_each(?))",
                (json.dumps([n for n, _ in missing]),),
            ).fetchall())
        return ids

    def _old_relations(self, post_ids: list[int]) -> dict[int, dict[int, int]]:
        """post id → {tag id: relation id} for posts about to be replaced."""
        old: dict[int, dict[int, int]] = {pid: {} for pid in post_ids}
        if post_ids:
            self._need_post_index()
            for rel_id, post_id, tag_id in self.conn.execute(
                "SELECT id, post_id, tag_id FROM posttagrelation "
                "WHERE post_id IN (SELECT value FROM json_each(?))", (_json_ids(post_ids),)
            ):
                old[post_id][tag_id] = rel_id
        return old

    # -- writes -----------------------------------------------------------------------------
    def _write_posts(self, final: dict[int, ParsedPost], action: dict[int, str]) -> None:
        columns = [c for c, _ in _POST_COLUMNS] + (["updated_at"] if self.has_updated_at else [])
        width = len(columns)
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * width)
        inserts = [p.row[:width] for pid, p in final.items() if action[pid] == "insert"]
        updates = [p.row[:width] for pid, p in final.items() if action[pid] == "update"]
        if inserts:
            self.conn.executemany(f"INSERT INTO post ({names}) VALUES ({marks})", inserts)
        if updates:
            # REPLACE rewrites the whole row; relations reference post ids, which do not change.
            self.conn.executemany(f"INSERT OR REPLACE INTO post ({names}) VALUES ({marks})", updates)
            # The rewritten row is complete (parse_post refuses NULLs): what a snapshot left
            # unknown of the old version is no longer so.
            forget_unknown(self.db, self.conn, [pid for pid, a in action.items() if a == "update"])

    def _write_relations(
        self, final: dict[int, ParsedPost], tag_ids: dict[str, int], old: dict[int, dict[int, int]],
    ) -> None:
        """Add/delete only the relations that changed, and move popularity by the same deltas."""
        added: list[tuple[int, int]] = []
        removed: list[tuple[int]] = []
        plus_all: list[int] = []
        minus_all: list[int] = []
        id_of = tag_ids.__getitem__
        for post in final.values():
            new_ids = list(map(id_of, post.tags))
            before = old.get(post.id)
            if before:
                new_set = set(new_ids)
                new_ids = [t for t in new_ids if t not in before]
                minus = [t for t in before if t not in new_set]
                removed.extend((before[t],) for t in minus)
                minus_all.extend(minus)
            added.extend(zip(itertools.repeat(post.id), new_ids))
            plus_all.extend(new_ids)
        delta: Counter[int] = Counter(plus_all)
        delta.subtract(minus_all)
        if removed:
            self.conn.executemany("DELETE FROM posttagrelation WHERE id = ?", removed)
        if added:
            self.conn.executemany("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)", added)
        changes = [(n, t) for t, n in delta.items() if n]
        if changes:
            self.conn.executemany("UPDATE tag SET popularity = popularity + ? WHERE id = ?", changes)
