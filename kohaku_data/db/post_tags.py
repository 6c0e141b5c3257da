"""Each post's tag ids, stored compressed by blocks of post ids (migration 0011).

Captions read every relation of every post. From the tables that costs SQLite a step per
relation plus writing and parsing its digits: ~3 s of CPU per million posts, a third of a
caption job and more than the captioning itself. Here the same relations are kept as one blob
per `BLOCK` post ids — per id its number of relations, then every relation's tag id as the
difference from the post's previous (smaller) tag id, both split into byte planes and
deflated (~1.3 bytes per relation on Danbooru-like data, ~2% of the file) — so a page of
posts is a few blob reads and numpy passes (~10x faster).

- Same multiset as the table: duplicate (post, tag) rows stay, orphans (relations of posts
  that do not exist) too — the reader drops them exactly as it does with rows from SQL.
- Never stale: triggers on `posttagrelation` note the block of every written row in
  `kdata_post_tags_dirty` in the writing transaction, and `blocks_current` is False while
  any block is noted (or the triggers are missing), so readers fall back to SQL until
  `refresh_if_stale` re-encodes just the noted blocks (sync of a few posts: milliseconds, not
  the ~1 min of a full build at 7.8M posts). Import, sync and migrate call it through
  `summary.refresh`. A bulk import first `retire`s the blocks: the guarded triggers then cost
  one flag lookup per row, and the refresh builds everything once.
- This module keeps the tables, triggers and state and fetches blobs with sqlite alone (a
  caption run fetches pages while numpy is still being imported); post_tag_blocks.py holds
  the blob codec (numpy), post_tag_layout.py the block size and layout version both use.
- Not for `tag_order = "db"` (it needs relation ids) or for tag ids that are negative, not
  integers or over 2**32 (then no blocks are built: the state says so and readers use SQL).
"""

from __future__ import annotations

import sqlite3

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.post_tag_layout import BLOCK, BLOCK_BITS, LAYOUT

BLOCKS_TABLE = "kdata_post_tags"
STATE_TABLE = "kdata_post_tags_state"
DIRTY_TABLE = "kdata_post_tags_dirty"
# Blocks encoded per read while building (bounds the builder's memory to ~50 MB per million
# relations of that many blocks: 16 blocks, ~1.6M relations on the sample, ~80 MB; 64 held
# ~300 MB for no gain in time).
_BUILD_GROUP = 16
# Deltas are stored as uint32: larger tag ids (none in Danbooru) are read from SQL.
_MAX_TAG_ID = (1 << 32) - 1
_BLOCK_OF = {"insert": ["NEW"], "delete": ["OLD"], "update": ["OLD", "NEW"]}
# ((post_id - first post) << tag bits) | tag_id: one short number per relation instead of two
# (SQLite's time goes into writing digits); db/pages.py fetches relations the same way.
PACKED_RELATIONS_SQL = "SELECT group_concat(((post_id - ?) << ?) | tag_id) FROM posttagrelation WHERE "


def fetch_blocks(conn: sqlite3.Connection, first: int, last: int) -> list[tuple[int, bytes]]:
    """(block, blob) of the blocks holding post ids [first, last], by block (check
    `blocks_current` first; post_tag_blocks.py decodes them)."""
    return conn.execute(f"SELECT block, data FROM {BLOCKS_TABLE} WHERE block BETWEEN ? AND ? ORDER BY block",
                        (first >> BLOCK_BITS, last >> BLOCK_BITS)).fetchall()


def blocks_current(conn: sqlite3.Connection) -> bool:
    """Whether the blocks exist and hold what the table holds now (else read relations from SQL)."""
    state = _state(conn)
    return state is not None and _complete(state) and _has_triggers(conn) and not _any_dirty(conn)


def _state(conn: sqlite3.Connection) -> dict | None:
    try:
        return dict(conn.execute(f"SELECT key, value FROM {STATE_TABLE}").fetchall())
    except sqlite3.OperationalError:  # not migrated: no such table
        return None


def _complete(state: dict) -> bool:
    return state.get("layout") == LAYOUT and state.get("complete") == 1


def _any_dirty(conn: sqlite3.Connection) -> bool:
    try:
        return conn.execute(f"SELECT 1 FROM {DIRTY_TABLE} LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError:  # blocks of an earlier layout without the table
        return True


def install(db: DanbooruDB) -> None:
    """Tables, triggers and a first build (migration 0011; idempotent)."""
    _build_all(db.connection())


def retire(db: DanbooruDB, *, drop_triggers: bool = False) -> None:
    """Mark every block stale before a bulk write (see the module docstring); no-op on a file
    without migration 0011. `drop_triggers`: also drop the noting triggers (even their guard
    costs ~0.2 µs a relation row, ~25% of a bulk relation insert); the next `refresh_if_stale`
    sees them missing, builds every block and puts them back."""
    if db.has_table(STATE_TABLE):
        conn = db.connection()
        conn.execute(f"INSERT OR REPLACE INTO {STATE_TABLE} (key, value) VALUES ('complete', 0)")
        if drop_triggers:
            for name in _trigger_names():
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")


def refresh_if_stale(db: DanbooruDB) -> bool:
    """Re-encode the blocks written since the last refresh (all of them after `retire`, or
    when the triggers went missing); True when anything was rebuilt. A file without
    migration 0011 is left alone."""
    if db.readonly or not db.has_table(STATE_TABLE):
        return False
    conn = db.connection()
    state, triggers = _state(conn) or {}, _has_triggers(conn)
    incremental = _complete(state) and triggers
    if incremental and not _any_dirty(conn):
        return False
    with db.database.atomic():
        if incremental:
            _rebuild_dirty(conn)
        else:
            _build_all(conn)
    return True


def _build_all(conn: sqlite3.Connection) -> None:
    """Tables and triggers where missing, then every block."""
    conn.execute(f"CREATE TABLE IF NOT EXISTS {BLOCKS_TABLE} (block INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (key TEXT PRIMARY KEY, value)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {DIRTY_TABLE} (block INTEGER PRIMARY KEY)")
    _create_triggers(conn)
    _build(conn)


def _trigger_names() -> list[str]:
    return [f"kdata_post_tags_{op}" for op in _BLOCK_OF]


def _has_triggers(conn: sqlite3.Connection) -> bool:
    names = _trigger_names()
    found = conn.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN "
                         f"({', '.join('?' * len(names))})", names).fetchone()[0]
    return found == len(names)


def _create_triggers(conn: sqlite3.Connection) -> None:
    """Per written relation, note its block — only while the blocks are complete (the guard
    keeps bulk writes after `retire` cheap)."""
    for name, (op, rows) in zip(_trigger_names(), _BLOCK_OF.items()):
        notes = " ".join(f"INSERT OR IGNORE INTO {DIRTY_TABLE} (block) VALUES ({row}.post_id >> {BLOCK_BITS});"
                         for row in rows)
        conn.execute(f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {op.upper()} ON posttagrelation "
                     f"WHEN (SELECT value FROM {STATE_TABLE} WHERE key = 'complete') = 1 BEGIN {notes} END")


def tag_bits(conn: sqlite3.Connection, max_id: int | None = None) -> int | None:
    """Bits that hold every tag id of posttagrelation (both ends come from the tag_id index),
    or None when some tag id is negative, not an integer, or over `max_id`."""
    lo, hi = _ends(conn, "tag_id")
    if lo is None:
        return 1
    if not (isinstance(lo, int) and isinstance(hi, int) and lo >= 0) or (max_id is not None and hi > max_id):
        return None
    return max(hi.bit_length(), 1)


def _ends(conn: sqlite3.Connection, column: str) -> tuple:
    """min and max of an indexed relation column (two subqueries: SQLite reads one end of the
    index for each, while `SELECT min(x), max(x)` scans the table)."""
    return conn.execute(f"SELECT (SELECT min({column}) FROM posttagrelation), "
                        f"(SELECT max({column}) FROM posttagrelation)").fetchone()


def tag_bits_of(conn: sqlite3.Connection) -> int | None:
    """`tag_bits` for the blocks: their deltas are uint32."""
    return tag_bits(conn, _MAX_TAG_ID)


def _build(conn: sqlite3.Connection) -> None:
    """Encode every block (the caller holds one transaction; the tables are kdata's own)."""
    conn.execute(f"DELETE FROM {BLOCKS_TABLE}")
    conn.execute(f"DELETE FROM {DIRTY_TABLE}")
    tag_bits = tag_bits_of(conn)
    lo, hi = _ends(conn, "post_id")
    if tag_bits is not None and lo is not None:
        if not (isinstance(lo, int) and isinstance(hi, int)):
            tag_bits = None
        else:
            span = _BUILD_GROUP * BLOCK
            for start in range((lo >> BLOCK_BITS) << BLOCK_BITS, hi + 1, span):
                _build_group(conn, start, start + span - 1, tag_bits)
    state = {"layout": LAYOUT, "complete": int(tag_bits is not None)}
    conn.executemany(f"INSERT OR REPLACE INTO {STATE_TABLE} (key, value) VALUES (?, ?)", state.items())


def _rebuild_dirty(conn: sqlite3.Connection) -> None:
    """Re-encode the noted blocks only (the caller holds one transaction)."""
    tag_bits = tag_bits_of(conn)
    if tag_bits is None:  # a stored-unfriendly tag id was written: readers use SQL from now on
        _build(conn)
        return
    for (block,) in conn.execute(f"SELECT block FROM {DIRTY_TABLE} ORDER BY block").fetchall():
        conn.execute(f"DELETE FROM {BLOCKS_TABLE} WHERE block = ?", (block,))
        _build_group(conn, block << BLOCK_BITS, ((block + 1) << BLOCK_BITS) - 1, tag_bits)
    conn.execute(f"DELETE FROM {DIRTY_TABLE}")


def _build_group(conn: sqlite3.Connection, first: int, last: int, tag_bits: int) -> None:
    # numpy only here: readers that just check the state or fetch blobs never import it
    from kohaku_data.db.post_tag_blocks import encode_relations

    text = conn.execute(PACKED_RELATIONS_SQL + "post_id BETWEEN ? AND ?", (first, tag_bits, first, last)).fetchone()[0]
    if text:
        conn.executemany(f"INSERT INTO {BLOCKS_TABLE} (block, data) VALUES (?, ?)",
                         encode_relations(text, first, tag_bits))
