"""Page fetching with sqlite alone (db/pages.py): what the caption reader parses, fetched ahead
in a thread — same pages as direct fetches, errors raised where they are consumed, stoppable."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from kohaku_data.captions import compute_thresholds, fetch_pages, iter_captions
from kohaku_data.captions.frame import parse_page, read_post_range
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB
from kohaku_data.db.pages import PageFetcher, fetch_ids, fetch_range, open_reader, page_bounds
from kohaku_data.sample import write_sample


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pages")
    write_sample(folder, posts=300, seed=5, images=0, migrate=True)
    return folder / "danbooru.db"


def test_fetched_pages_come_in_order_and_equal_direct_fetches(migrated: Path) -> None:
    conn = open_reader(migrated)
    try:
        direct = [fetch_range(conn, after, last, False) for after, last in page_bounds(conn, 37)]
    finally:
        conn.close()
    with PageFetcher(migrated, None, 37, with_rids=False, ahead=2) as fetcher:
        fetched = list(fetcher)
    assert fetched == direct
    assert sum(page.count for page in fetched) == 300
    assert fetched[0].relations is not None and fetched[0].relations.blocks  # migrated: stored blocks


def test_fetched_id_pages_skip_missing_ids_and_keep_relation_ids(migrated: Path) -> None:
    with sqlite3.connect(migrated) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM post ORDER BY id DESC LIMIT 50")]
    wanted = ids + [10**12]  # one id that does not exist
    with PageFetcher(migrated, wanted, 20, with_rids=True) as fetcher:
        pages = list(fetcher)
    assert [page.count for page in pages] == [20, 20, 10]
    posts, rel = parse_page(pages[0])
    assert posts["id"].to_list() == sorted(wanted)[:20] and rel.rid is not None
    conn = open_reader(migrated)
    try:
        assert pages[0] == fetch_ids(conn, sorted(wanted)[:20], True)
    finally:
        conn.close()


def test_parsed_pages_equal_the_rows(migrated: Path) -> None:
    conn = open_reader(migrated)
    try:
        posts, rel = read_post_range(conn, -1, None, False)
        rows = conn.execute("SELECT id, score, md5 FROM post ORDER BY id").fetchall()
        relations = sorted(conn.execute("SELECT post_id, tag_id FROM posttagrelation").fetchall())
    finally:
        conn.close()
    assert posts.select("id", "score", "md5").rows() == rows
    assert sorted(zip(rel.post_id.tolist(), rel.tag_id.tolist())) == relations


def test_a_fetch_error_is_raised_where_pages_are_consumed(tmp_path: Path) -> None:
    with PageFetcher(tmp_path / "missing.db", None, 10, with_rids=False) as fetcher:
        with pytest.raises(sqlite3.OperationalError):
            list(fetcher)


def test_close_stops_a_fetcher_that_runs_ahead(migrated: Path) -> None:
    fetcher = PageFetcher(migrated, None, 1, with_rids=False, ahead=1)  # 300 pages, one ahead
    first = next(iter(fetcher))
    assert first.count == 1
    start = time.monotonic()
    fetcher.close()
    assert "kdata-page-fetcher" not in {thread.name for thread in threading.enumerate()}
    assert time.monotonic() - start < 5
    fetcher.close()  # twice is fine


def test_captions_from_prefetched_pages_equal_captions_fetched_in_place(migrated: Path) -> None:
    config = CaptionConfig()
    with DanbooruDB.open(migrated, readonly=True) as db:
        thresholds = compute_thresholds(db, config)
        in_place = pl.concat(list(iter_captions(db, config, thresholds, chunk_size=64)))
        pages = fetch_pages(db, config, chunk_size=64)
        prefetched = pl.concat(list(iter_captions(db, config, thresholds, chunk_size=64, pages=pages)))
        with pytest.raises(ValueError, match="one process"):
            list(iter_captions(db, config, thresholds, chunk_size=64, workers=2,
                               pages=fetch_pages(db, config, chunk_size=64)))
    assert prefetched.equals(in_place) and in_place.height == 300
