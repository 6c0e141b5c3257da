"""Stored post tag blocks (db/post_tags.py, migration 0011): the same relations as the table,
never read when stale, rebuilt by the writers that refresh summaries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.captions import caption_posts, compute_thresholds, iter_captions
from kohaku_data.captions.frame import read_post_range
from kohaku_data.db.pages import open_reader
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB, summary
from kohaku_data.db.keepers import DB_KEEPERS
from kohaku_data.db.post_tag_blocks import decode_block, encode_block, relations_of_blocks
from kohaku_data.db.post_tags import (
    BLOCK, BLOCK_BITS, blocks_current, fetch_blocks, install, refresh_if_stale, retire,
)
from kohaku_data.sample import write_sample


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    write_sample(tmp_path, posts=600, seed=11, images=0, migrate=True)
    return tmp_path / "danbooru.db"


def _table_relations(path: Path, first: int, last: int) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT post_id, tag_id FROM posttagrelation WHERE post_id BETWEEN ? AND ?",
                                   (first, last)).fetchall())


def _block_relations(path: Path, first: int, last: int) -> list[tuple[int, int]]:
    conn = open_reader(path)
    assert blocks_current(conn)
    post_id, tag_id = relations_of_blocks(fetch_blocks(conn, first, last), first, last)
    assert np.all(np.diff(post_id) >= 0)  # by post id
    return sorted(zip(post_id.tolist(), tag_id.tolist()))


def test_block_round_trip_keeps_duplicates_and_large_ids() -> None:
    rng = np.random.default_rng(3)
    offset = np.sort(rng.integers(0, BLOCK, 5000))
    tag_id = rng.integers(0, 1 << 31, 5000)
    tag_id[10:14] = tag_id[9]  # duplicate rows of one tag
    offset[10:14] = offset[9]
    order = np.lexsort((tag_id, offset))
    offset, tag_id = offset[order], tag_id[order]
    post_id, decoded = decode_block(7, encode_block(offset, tag_id))
    assert post_id.tolist() == (offset + 7 * BLOCK).tolist()
    assert decoded.tolist() == tag_id.tolist()


def test_blocks_hold_exactly_the_table_rows(migrated: Path) -> None:
    with sqlite3.connect(migrated) as conn:
        lo, hi = conn.execute("SELECT min(post_id), max(post_id) FROM posttagrelation").fetchone()
        # an orphan relation and a duplicate row, written before the rebuild below
        conn.execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, 1)", (hi + 5 * BLOCK,))
        conn.execute("INSERT INTO posttagrelation (post_id, tag_id) SELECT post_id, tag_id FROM posttagrelation LIMIT 1")
    with DanbooruDB.open(migrated) as db:
        assert refresh_if_stale(db)
    hi += 5 * BLOCK
    for first, last in ((lo, hi), (lo + 1, lo + 1), (lo + 3, hi - BLOCK // 2), (hi - 1, hi + 10)):
        assert _block_relations(migrated, first, last) == _table_relations(migrated, first, last)


def _blobs(path: Path) -> dict[int, bytes]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT block, data FROM kdata_post_tags").fetchall())


def test_a_refresh_re_encodes_only_the_written_blocks(migrated: Path) -> None:
    with DanbooruDB.open(migrated) as db:
        conn = db.connection()
        lo, hi = conn.execute("SELECT min(post_id), max(post_id) FROM posttagrelation").fetchone()
        before = _blobs(migrated)
        # a sync-like write: one post's tags change, and a post lands in a block of its own
        conn.execute("DELETE FROM posttagrelation WHERE post_id = ? AND tag_id = (SELECT min(tag_id) "
                     "FROM posttagrelation WHERE post_id = ?)", (lo, lo))
        conn.execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, 2), (?, 3)", (hi + 3 * BLOCK,) * 2)
        touched = {lo >> BLOCK_BITS, (hi + 3 * BLOCK) >> BLOCK_BITS}
        assert {r[0] for r in conn.execute("SELECT block FROM kdata_post_tags_dirty")} == touched
        assert not blocks_current(conn)
        assert refresh_if_stale(db)
        assert blocks_current(conn)
        after = _blobs(migrated)
        assert {b for b in after if after[b] != before.get(b)} == touched
        retire(db)  # a full build gives the same blocks
        assert refresh_if_stale(db)
        assert _blobs(migrated) == after
    assert _block_relations(migrated, lo, hi + 4 * BLOCK) == _table_relations(migrated, lo, hi + 4 * BLOCK)


def test_missing_triggers_mean_a_full_rebuild(migrated: Path) -> None:
    with DanbooruDB.open(migrated) as db:
        conn = db.connection()
        conn.execute("DROP TRIGGER kdata_post_tags_insert")
        assert not blocks_current(conn)  # a write now would go unnoticed: not trusted
        first = conn.execute("SELECT min(post_id) FROM posttagrelation").fetchone()[0]
        conn.execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, 5)", (first,))
        assert refresh_if_stale(db)
        assert blocks_current(conn)
        install(db)  # idempotent
    assert _block_relations(migrated, first, first) == _table_relations(migrated, first, first)


def test_a_write_makes_readers_use_sql_until_refreshed(migrated: Path) -> None:
    config = CaptionConfig()
    with DanbooruDB.open(migrated) as db:
        assert blocks_current(db.connection())
        ids = [r[0] for r in db.connection().execute("SELECT id FROM post ORDER BY id LIMIT 5")]
        # an outside writer (the sqlite3 shell): the counting triggers see it
        db.connection().execute("DELETE FROM posttagrelation WHERE post_id = ?", (ids[0],))
        db.connection().execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, 1)", (ids[1],))
        assert not blocks_current(db.connection())
        thresholds = compute_thresholds(db, config)
        after_write = caption_posts(db, ids, config, thresholds)
        whole = pl.concat(list(iter_captions(db, config, thresholds, chunk_size=100)))
        assert "post tag blocks" in summary.refresh(db, DB_KEEPERS)
        assert blocks_current(db.connection())
        refreshed = pl.concat(list(iter_captions(db, config, thresholds, chunk_size=100)))
    assert after_write["tags_general"][0].to_list() == []  # the deleted relations are gone
    assert whole.equals(refreshed)  # SQL reads and block reads give the same captions


def test_captions_from_blocks_equal_captions_from_sql(migrated: Path, tmp_path: Path) -> None:
    """The same file with the blocks emptied (not migrated that far) captions identically."""
    plain = tmp_path / "plain.db"
    with sqlite3.connect(migrated) as src, sqlite3.connect(plain) as dst:
        src.backup(dst)
        dst.execute("DELETE FROM kdata_post_tags_state")
    config = CaptionConfig()
    frames = {}
    for path in (migrated, plain):
        with DanbooruDB.open(path, readonly=True) as db:
            frames[path] = pl.concat(list(iter_captions(db, config, compute_thresholds(db, config), chunk_size=64)))
    with DanbooruDB.open(plain, readonly=True) as db:
        assert not blocks_current(db.connection())
    assert frames[migrated].equals(frames[plain])


def test_negative_tag_ids_build_no_blocks(migrated: Path) -> None:
    with sqlite3.connect(migrated) as conn:
        conn.execute("INSERT INTO tag (id, name, type, popularity) VALUES (-4, 'negative_tag', 0, 1)")
        first = conn.execute("SELECT min(id) FROM post").fetchone()[0]
        conn.execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, -4)", (first,))
    with DanbooruDB.open(migrated) as db:
        assert refresh_if_stale(db)
        conn = db.connection()
        assert not blocks_current(conn)  # readers use SQL, which handles them
        posts, rel = read_post_range(open_reader(migrated), first - 1, first, False)
    assert -4 in rel.tag_id.tolist()
