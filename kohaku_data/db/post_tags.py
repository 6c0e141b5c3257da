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
- Never stale: the blocks are stored with the DB summaries' write counter and fingerprint
  (db/summary.py) they were built at, and `open_post_tags` returns None unless both are
  current, so readers fall back to SQL after any write until `refresh_if_stale` rebuilds
  (import, sync and migrate call it through `summary.refresh`).
- Not for `tag_order = "db"` (it needs relation ids) or for tag ids that are negative or not
  integers (no such file is built: the state says so and readers use SQL).
"""

from __future__ import annotations

import sqlite3
import zlib
from dataclasses import dataclass

import numpy as np

from kohaku_data.db import summary
from kohaku_data.db.handle import DanbooruDB

BLOCKS_TABLE = "kdata_post_tags"
STATE_TABLE = "kdata_post_tags_state"
BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS  # post ids per block
# Bumped whenever the blob layout changes: blocks of another layout count as stale.
LAYOUT = 1
# Blocks encoded per read while building (bounds the builder's memory to ~50 MB per million
# relations of that many blocks).
_BUILD_GROUP = 64
_PACKED_SQL = "SELECT group_concat(((post_id - ?) << ?) | tag_id) FROM posttagrelation WHERE post_id BETWEEN ? AND ?"


@dataclass(frozen=True)
class PostTags:
    """The current blocks of one file; `relations` reads them over any connection to it."""

    def relations(self, conn: sqlite3.Connection, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """(post_id, tag_id) of every relation whose post id lies in [first, last], by post id."""
        rows = conn.execute(f"SELECT block, data FROM {BLOCKS_TABLE} WHERE block BETWEEN ? AND ? ORDER BY block",
                            (first >> BLOCK_BITS, last >> BLOCK_BITS)).fetchall()
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        parts = [decode_block(block, data) for block, data in rows]
        post_id = np.concatenate([p for p, _ in parts])
        tag_id = np.concatenate([t for _, t in parts])
        keep = slice(np.searchsorted(post_id, first), np.searchsorted(post_id, last, side="right"))
        return post_id[keep], tag_id[keep]


def open_post_tags(conn: sqlite3.Connection) -> PostTags | None:
    """The blocks when they exist and are current, else None (read relations from SQL)."""
    try:
        state = dict(conn.execute(f"SELECT key, value FROM {STATE_TABLE}").fetchall())
    except sqlite3.OperationalError:  # not migrated: no such table
        return None
    if state.get("layout") != LAYOUT or state.get("complete") != 1:
        return None
    now = summary.version_of(conn)
    if now is None or (state.get("writes"), state.get("fingerprint")) != now:
        return None
    return PostTags()


def install(db: DanbooruDB) -> None:
    """Tables and a first build (migration 0011; idempotent)."""
    conn = db.connection()
    conn.execute(f"CREATE TABLE IF NOT EXISTS {BLOCKS_TABLE} (block INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (key TEXT PRIMARY KEY, value)")
    _build(conn)


def refresh_if_stale(db: DanbooruDB) -> bool:
    """Rebuild the blocks after writes (import, sync, migrate); True when rebuilt. A file
    without migration 0011, or whose summaries are not being counted, is left alone."""
    conn = db.connection()
    if db.readonly or not db.has_table(STATE_TABLE) or summary.version_of(conn) is None:
        return False
    if open_post_tags(conn) is not None:
        return False
    with db.database.atomic():
        _build(conn)
    return True


def _build(conn: sqlite3.Connection) -> None:
    """Encode every block and record the write state they match (the caller holds one
    transaction; the blocks are kdata's own, so the counter does not move)."""
    conn.execute(f"DELETE FROM {BLOCKS_TABLE}")
    conn.execute(f"DELETE FROM {STATE_TABLE}")
    lo, hi, tag_lo, tag_hi = conn.execute(
        "SELECT min(post_id), max(post_id), min(tag_id), max(tag_id) FROM posttagrelation").fetchone()
    usable = lo is None or all(isinstance(v, int) for v in (lo, hi, tag_lo, tag_hi)) and tag_lo >= 0
    if usable and lo is not None:
        tag_bits = max(tag_hi.bit_length(), 1)
        span = _BUILD_GROUP * BLOCK
        for start in range((lo >> BLOCK_BITS) << BLOCK_BITS, hi + 1, span):
            _build_group(conn, start, start + span - 1, tag_bits)
    state = {"layout": LAYOUT, "complete": int(usable)}
    now = summary.version_of(conn)
    if now is not None:
        state.update(writes=now[0], fingerprint=now[1])
    conn.executemany(f"INSERT INTO {STATE_TABLE} (key, value) VALUES (?, ?)", state.items())


def _build_group(conn: sqlite3.Connection, first: int, last: int, tag_bits: int) -> None:
    text = conn.execute(_PACKED_SQL, (first, tag_bits, first, last)).fetchone()[0]
    if not text:
        return
    packed = np.sort(np.fromstring(text, dtype=np.int64, sep=","))  # by post, then tag id
    offset, tag_id = packed >> tag_bits, packed & ((1 << tag_bits) - 1)
    block = offset >> BLOCK_BITS
    bounds = np.flatnonzero(np.diff(block)) + 1
    rows = [(int(b[0]) + (first >> BLOCK_BITS), encode_block(o & (BLOCK - 1), t))
            for b, o, t in zip(np.split(block, bounds), np.split(offset, bounds), np.split(tag_id, bounds))]
    conn.executemany(f"INSERT INTO {BLOCKS_TABLE} (block, data) VALUES (?, ?)", rows)


def encode_block(id_offset: np.ndarray, tag_id: np.ndarray) -> bytes:
    """One block's blob from its relations sorted by (id offset in the block, tag id)."""
    counts = np.bincount(id_offset, minlength=BLOCK).astype("<u4")
    delta = np.diff(tag_id, prepend=0)
    starts = _post_starts(counts)
    delta[starts] = tag_id[starts]
    return zlib.compress(_planes(counts) + _planes(delta.astype("<u4")), 1)


def decode_block(block: int, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(post_id, tag_id) of one block, by post id."""
    raw = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    counts = _unplanes(raw[:4 * BLOCK])
    delta = _unplanes(raw[4 * BLOCK:]).astype(np.int64)
    post_id = np.repeat(np.arange(block << BLOCK_BITS, (block + 1) << BLOCK_BITS, dtype=np.int64), counts)
    running = np.cumsum(delta)
    starts = _post_starts(counts)
    # cumsum restarts at each post: subtract what came before the post's first relation
    before = np.repeat(running[starts] - delta[starts], counts[counts > 0])
    return post_id, running - before


def _post_starts(counts: np.ndarray) -> np.ndarray:
    """Index of each post's first relation (posts with none left out)."""
    ends = np.cumsum(counts, dtype=np.int64)
    return (ends - counts)[counts > 0]


def _planes(values: np.ndarray) -> bytes:
    """Little-endian uint32s as four byte planes (low bytes first): deflate finds the long runs
    of zero high bytes that small counts and tag-id differences have."""
    return values.view(np.uint8).reshape(-1, 4).T.tobytes()


def _unplanes(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw.reshape(4, -1).T).view("<u4").ravel()
