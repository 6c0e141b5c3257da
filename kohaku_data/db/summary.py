"""Whole-DB summaries (counts, date range, rating mix, caption thresholds, /stats) kept in the
file, and never served stale.

Computing them scans the DB (15 s and more at Danbooru2023's 7.8M posts), yet they change only
when the DB is written. Migration 0005 adds:

- `kdata_write_counter`: one row, `writes`, bumped by triggers after every INSERT, UPDATE and
  DELETE on `post`, `tag`, `posttagrelation` and `kdata_tag_alias`, whoever writes (kdata, the
  published tools, the sqlite3 shell);
- `kdata_summary`: name → JSON payload, with the `writes` value and a fingerprint (max ids of
  the three published tables) it was computed at.

A summary is served only when (1) every counting trigger exists, (2) its `writes` equals the
counter now and (3) its fingerprint equals the current max ids (belt and braces against a
writer that dropped the triggers and put them back without bumping). Otherwise it is computed
again from the rows (and stored, when the handle may write). Checking costs three index lookups.

Why not sqlite's `PRAGMA data_version`: it only says that *another connection* committed since
this connection last looked, not whether anything changed since the summary was computed
(a new process always starts from scratch), so it cannot key a stored summary. The service uses
the counter the same way for its in-memory cache, so a sync into the file shows without a restart.

Bulk writers (`kdata db import`) would pay a trigger call per row (~40% on relation inserts), so
they suspend counting (`suspended(db)`): the triggers are dropped in a transaction that bumps the
counter, and put back, with another bump, when the import ends, also on error. A killed import
leaves them dropped, which rule (1) turns into "never served" until the next import or
`kdata db migrate` puts them back (`ensure_counting`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

from kohaku_data.db.handle import DanbooruDB

COUNTER_TABLE = "kdata_write_counter"
SUMMARY_TABLE = "kdata_summary"
COUNTED_TABLES = ("post", "tag", "posttagrelation", "kdata_tag_alias")
# Bumped whenever `refresh` stores other summaries (kinds or layouts), so that `kdata db migrate`
# after an upgrade stores them. 2: the prepared tag table replaced the tag columns.
LAYOUT = 2
_LAYOUT_NAME = "layout"
_OPERATIONS = ("insert", "update", "delete")
T = TypeVar("T")
# Computes and stores summaries (or rebuilds an index that writes make stale) after a write;
# returns the names of what it stored. See `refresh`.
Keeper = Callable[[DanbooruDB], list[str]]


def trigger_names() -> list[str]:
    return [f"kdata_count_{table}_{op}" for table in COUNTED_TABLES for op in _OPERATIONS]


def _trigger_sql(table: str, op: str) -> str:
    return (f'CREATE TRIGGER IF NOT EXISTS "kdata_count_{table}_{op}" AFTER {op.upper()} ON "{table}" '
            f'BEGIN UPDATE "{COUNTER_TABLE}" SET writes = writes + 1; END')


def install(db: DanbooruDB) -> None:
    """The counter, the summary table and the triggers (migration 0005; idempotent)."""
    conn = db.connection()
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{COUNTER_TABLE}" '
                 "(id INTEGER PRIMARY KEY CHECK (id = 1), writes INTEGER NOT NULL)")
    conn.execute(f'INSERT OR IGNORE INTO "{COUNTER_TABLE}" (id, writes) VALUES (1, 0)')
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{SUMMARY_TABLE}" (name TEXT PRIMARY KEY, '
                 "writes INTEGER NOT NULL, fingerprint TEXT NOT NULL, payload TEXT NOT NULL, computed_at TEXT NOT NULL)")
    ensure_counting(db)


def has_summaries(db: DanbooruDB) -> bool:
    return db.has_table(SUMMARY_TABLE) and db.has_table(COUNTER_TABLE)


def counting(db: DanbooruDB) -> bool:
    """Whether every counting trigger is in place (else no summary may be trusted)."""
    names = trigger_names()
    found = db.connection().execute(
        f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN ({', '.join('?' * len(names))})",
        names).fetchone()[0]
    return found == len(names)


def ensure_counting(db: DanbooruDB) -> bool:
    """Put back missing triggers (a killed bulk import), bumping the counter; True if any was."""
    if db.readonly or not has_summaries(db) or counting(db):
        return False
    conn = db.connection()
    with db.database.atomic():
        for table in COUNTED_TABLES:
            if db.has_table(table):
                for op in _OPERATIONS:
                    conn.execute(_trigger_sql(table, op))
        _bump(db)
    return True


def _bump(db: DanbooruDB) -> None:
    db.connection().execute(f'UPDATE "{COUNTER_TABLE}" SET writes = writes + 1')


@contextmanager
def suspended(db: DanbooruDB) -> Iterator[None]:
    """Bulk writes without a trigger call per row: see the module docstring."""
    if db.readonly or not has_summaries(db):
        yield
        return
    conn = db.connection()
    with db.database.atomic():
        _bump(db)
        for name in trigger_names():
            conn.execute(f'DROP TRIGGER IF EXISTS "{name}"')
    try:
        yield
    finally:
        ensure_counting(db)


def _state(db: DanbooruDB) -> tuple[int, str] | None:
    """(writes, fingerprint) now, or None when summaries cannot be trusted or do not exist."""
    return _state_of(db.connection())


def _state_of(conn: sqlite3.Connection) -> tuple[int, str] | None:
    names = [SUMMARY_TABLE, COUNTER_TABLE, *trigger_names()]
    found = conn.execute(
        f"SELECT count(*) FROM sqlite_master WHERE name IN ({', '.join('?' * len(names))})", names).fetchone()[0]
    if found != len(names):
        return None
    writes = conn.execute(f'SELECT writes FROM "{COUNTER_TABLE}"').fetchone()[0]
    marks = [conn.execute(f'SELECT max(id) FROM "{t}"').fetchone()[0] for t in ("post", "tag", "posttagrelation")]
    return int(writes), json.dumps(marks)


def version(db: DanbooruDB) -> tuple[int, str] | None:
    """A value that changes with every write (None: not tracked): a key for in-memory caches."""
    return _state(db)


def read(db: DanbooruDB, name: str) -> Any | None:
    """The stored payload of `name` if it is current, else None (bytes stay bytes)."""
    return read_from(db.connection(), name)


def read_from(conn: sqlite3.Connection, name: str) -> Any | None:
    """`read` over a plain sqlite3 connection (caption page readers and workers hold those)."""
    state = _state_of(conn)
    if state is None:
        return None
    row = conn.execute(
        f'SELECT writes, fingerprint, payload FROM "{SUMMARY_TABLE}" WHERE name = ?', (name,)).fetchone()
    if row is None or (row[0], row[1]) != state:
        return None
    return row[2] if isinstance(row[2], bytes) else json.loads(row[2])


def store(db: DanbooruDB, name: str, payload: Any) -> bool:
    """Keep `payload` (JSON-able, or bytes kept as a BLOB) as the current `name` (False:
    read-only handle or no summary tables)."""
    if db.readonly:
        return False
    state = _state(db)
    if state is None:
        return False
    with db.database.atomic():
        db.connection().execute(
            f'INSERT OR REPLACE INTO "{SUMMARY_TABLE}" (name, writes, fingerprint, payload, computed_at) '
            "VALUES (?, ?, ?, ?, ?)",
            (name, state[0], state[1], payload if isinstance(payload, bytes) else json.dumps(payload, sort_keys=True),
             datetime.now(timezone.utc).isoformat(timespec="seconds")))
    return True


def cached(db: DanbooruDB, name: str, compute: Callable[[], T], *,
           encode: Callable[[T], Any] = lambda x: x, decode: Callable[[Any], T] = lambda x: x) -> T:
    """The current stored `name`, or `compute()` (stored when the handle may write)."""
    payload = read(db, name)
    if payload is not None:
        return decode(payload)
    value = compute()
    store(db, name, encode(value))
    return value


def config_key(kind: str, config: Any) -> str:
    """Summary name for something computed under a config (a pydantic model or JSON-able)."""
    text = config.model_dump_json() if hasattr(config, "model_dump_json") else json.dumps(config, sort_keys=True)
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def refresh(db: DanbooruDB, keepers: Sequence[Keeper]) -> list[str]:
    """Run every keeper (after import, sync, migrate), then mark the summaries current for this
    LAYOUT and drop the stale ones; returns the names stored (empty: read-only handle or no
    summary tables).

    The keepers come from the caller, not from a list here: each layer owns its summaries (the
    DB counts: db/keepers.py; caption thresholds, stats and tag tables: captions/summaries.py),
    and db/ may not import a layer above it. kohaku_data/keepers.py declares the whole list."""
    if db.readonly or not has_summaries(db):
        return []
    ensure_counting(db)
    stored = [name for keep in keepers for name in keep(db)]
    if store(db, _LAYOUT_NAME, _layout(keepers)):
        stored.append(_LAYOUT_NAME)
    drop_stale(db)
    return stored


def up_to_date(db: DanbooruDB, keepers: Sequence[Keeper]) -> bool:
    """Whether `refresh` ran since the last write, with this version's LAYOUT and these keepers
    (a refresh by fewer keepers, e.g. the DB's own only, leaves the others' summaries out)."""
    return read(db, _LAYOUT_NAME) == _layout(keepers)


def _layout(keepers: Sequence[Keeper]) -> dict[str, Any]:
    return {"layout": LAYOUT, "keepers": [f"{k.__module__}.{k.__qualname__}" for k in keepers]}


def forget(db: DanbooruDB, kinds: tuple[str, ...]) -> None:
    """Delete every summary of these kinds (`config_key` names), e.g. ones no longer read."""
    if db.readonly or not has_summaries(db):
        return
    with db.database.atomic():
        for kind in kinds:
            prefix = f"{kind}:"
            db.connection().execute(f'DELETE FROM "{SUMMARY_TABLE}" WHERE substr(name, 1, ?) = ?', (len(prefix), prefix))


def drop_stale(db: DanbooruDB) -> int:
    """Delete the summaries computed before the last write (they are never served again; a big
    one, such as a prepared 1M-row tag table, holds tens of MB). Returns how many."""
    state = _state(db)
    if db.readonly or state is None:
        return 0
    with db.database.atomic():
        cursor = db.connection().execute(
            f'DELETE FROM "{SUMMARY_TABLE}" WHERE writes != ? OR fingerprint != ?', state)
    return cursor.rowcount
