"""DB summaries (db/summary.py): kept by import, sync and migrate, never served stale."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from kohaku_data.captions import caption_stats, compute_thresholds
from kohaku_data.captions.summaries import stats_name, thresholds_name
from kohaku_data.captions.thresholds import read_metrics, thresholds_from_frame
from kohaku_data.config import CaptionConfig, Recipe
from kohaku_data.db import DanbooruDB, summary
from kohaku_data.db.importer import import_files
from kohaku_data.db.info import INFO_SUMMARY, count_rows, db_info
from kohaku_data.db.keepers import DB_KEEPERS
from kohaku_data.db.migrate import migrate
from kohaku_data.keepers import SUMMARY_KEEPERS
from kohaku_data.sample import write_sample
from kohaku_data.service.client import ClientSettings, DanbooruClient
from kohaku_data.service.sync import sync_posts
from fake_danbooru import FakeDanbooru, make_posts


@pytest.fixture
def migrated(tmp_path: Path) -> Path:
    write_sample(tmp_path, posts=400, seed=4, images=0, migrate=True)
    return tmp_path / "danbooru.db"


def _stored(path: Path) -> dict[str, tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return {name: (writes, payload) for name, writes, payload in
                conn.execute("SELECT name, writes, payload FROM kdata_summary")}


def _external_write(path: Path, sql: str, *args) -> None:
    """A writer that knows nothing of kdata (the sqlite3 shell, the published tools)."""
    with sqlite3.connect(path) as conn:
        conn.execute(sql, args)


def test_migrate_stores_current_summaries(migrated: Path) -> None:
    stored = _stored(migrated)
    config = Recipe().caption
    assert {INFO_SUMMARY, "stats", thresholds_name(config)} <= set(stored)
    with DanbooruDB.open(migrated, readonly=True) as db:
        assert summary.counting(db)
        assert summary.read(db, INFO_SUMMARY) == count_rows(db)
        live = thresholds_from_frame(read_metrics(db, config.quality_metric), config)
        assert compute_thresholds(db, config) == live
        assert stats_name(config, live) in stored


def test_a_write_by_anyone_makes_summaries_stale_and_never_served(migrated: Path) -> None:
    with DanbooruDB.open(migrated, readonly=True) as db:
        before = db_info(db)
    _external_write(migrated, "UPDATE post SET rating = 3 WHERE id = (SELECT min(id) FROM post WHERE rating = 0)")
    with DanbooruDB.open(migrated, readonly=True) as db:
        assert summary.read(db, INFO_SUMMARY) is None  # stored, but computed before the write
        after = db_info(db)  # computed from the rows, not the stored summary
    assert after["ratings"]["general"] == before["ratings"]["general"] - 1
    assert after["ratings"]["explicit"] == before["ratings"]["explicit"] + 1
    _external_write(migrated, "DELETE FROM posttagrelation WHERE id = (SELECT max(id) FROM posttagrelation)")
    with DanbooruDB.open(migrated, readonly=True) as db:
        assert db_info(db)["relations"] == before["relations"] - 1
    _external_write(migrated, "INSERT INTO kdata_tag_alias (alias, tag_name) VALUES ('zz_new_alias', '1girl')")
    with DanbooruDB.open(migrated) as db:  # a writable handle stores what it computed
        assert db_info(db)["aliases"] == before["aliases"] + 1
        assert summary.read(db, INFO_SUMMARY) == count_rows(db)


def test_thresholds_and_caption_stats_follow_writes(migrated: Path) -> None:
    config = CaptionConfig()
    with DanbooruDB.open(migrated, readonly=True) as db:
        old = caption_stats(db, config, compute_thresholds(db, config))
    _external_write(migrated, "UPDATE post SET fav_count = fav_count + 100000 WHERE rating = 0")
    with DanbooruDB.open(migrated, readonly=True) as db:
        thresholds = compute_thresholds(db, config)
        assert thresholds == thresholds_from_frame(read_metrics(db, config.quality_metric), config)
        new = caption_stats(db, config, thresholds)
    assert thresholds.by_rating["general"] != tuple(old["thresholds"]["by_rating"]["general"])
    assert new["thresholds"] == thresholds.to_dict()


def test_dropped_triggers_mean_nothing_is_served_until_migrate(migrated: Path) -> None:
    """What a killed bulk import leaves: triggers dropped, so writes are not counted."""
    with DanbooruDB.open(migrated) as db:
        with pytest.raises(RuntimeError):
            with summary.suspended(db):
                raise RuntimeError("import failed")
        assert summary.counting(db) and summary.read(db, INFO_SUMMARY) is None  # bumped, back in place
        summary.refresh(db, SUMMARY_KEEPERS)
        with db.database.atomic():
            for name in summary.trigger_names():
                db.connection().execute(f'DROP TRIGGER "{name}"')
    _external_write(migrated, "UPDATE post SET score = score + 1")  # uncounted
    with DanbooruDB.open(migrated, readonly=True) as db:
        assert not summary.counting(db) and summary.read(db, INFO_SUMMARY) is None
    with DanbooruDB.open(migrated) as db:
        migrate(db, keepers=SUMMARY_KEEPERS)
        assert summary.counting(db) and summary.read(db, INFO_SUMMARY) == count_rows(db)


def test_import_refreshes_summaries(tmp_path: Path, posts_sample_path: Path) -> None:
    path = tmp_path / "danbooru.db"
    with DanbooruDB.create(path) as db:
        migrate(db, keepers=SUMMARY_KEEPERS)
        empty = db_info(db)
        import_files(db, [posts_sample_path], keepers=SUMMARY_KEEPERS)
        assert summary.counting(db)  # put back after the bulk write
        stored = summary.read(db, INFO_SUMMARY)
        assert stored is not None and stored == count_rows(db)
        assert stored["posts"] > empty["posts"] == 0
        assert summary.read(db, thresholds_name(Recipe().caption)) is not None


def test_sync_refreshes_summaries(tmp_path: Path) -> None:
    path = tmp_path / "danbooru.db"
    settings = ClientSettings(rate=10_000, timeout=5, max_failures=4, backoff_base=0.001, backoff_max=0.01)
    with DanbooruDB.create(path) as db:
        migrate(db)
        with FakeDanbooru(make_posts(70, seed=3)) as server, DanbooruClient(server.url, settings) as client:
            sync_posts(db, client, limit_per_page=30)
        stored = summary.read(db, INFO_SUMMARY)
        assert stored is not None and stored["posts"] == 70 and stored == count_rows(db)


def test_serve_stats_follow_a_write_without_restart(migrated: Path) -> None:
    import socket

    import uvicorn

    from kohaku_data.service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(migrated, pipelines_dir=None), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)

        def stats() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as resp:
                return json.loads(resp.read())

        first = stats()
        _external_write(migrated, "DELETE FROM post WHERE id = (SELECT max(id) FROM post)")
        second = stats()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert second["posts"] == first["posts"] - 1
    assert second["caption"]["posts"] == first["caption"]["posts"] - 1


def test_stored_prepared_tags_give_the_same_captions_and_follow_tag_writes(
        migrated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import polars as pl

    import kohaku_data.captions as captions_module
    from kohaku_data.captions import iter_captions, summaries
    from kohaku_data.db.pages import open_reader

    monkeypatch.setattr(summaries, "STORE_PREPARED_TAGS_FROM", 0)  # as for a 1M-row tag table
    config = Recipe().caption
    with DanbooruDB.open(migrated) as db:
        assert summaries.prepared_tags_name(config) in summary.refresh(db, SUMMARY_KEEPERS)
        thresholds = compute_thresholds(db, config)
        conn = open_reader(migrated)
        try:
            assert summaries.stored_prepared_tags(conn, config) is not None
            stored = pl.concat(list(iter_captions(db, config, thresholds)))
            with monkeypatch.context() as m:  # the same run, the tag table prepared from its rows
                m.setattr(captions_module, "stored_prepared_tags", lambda *a: None)
                prepared = pl.concat(list(iter_captions(db, config, thresholds)))
            assert stored.equals(prepared)
            _external_write(migrated, "UPDATE tag SET name = 'renamed_hair' WHERE name = 'long_hair'")
            assert summaries.stored_prepared_tags(conn, config) is None  # the tag table moved on
        finally:
            conn.close()
        after = pl.concat(list(iter_captions(db, config, thresholds)))
    shown = r"(^|, |\|\|\|){}(,|$)"
    assert stored["caption"].str.contains(shown.format("long hair")).any()
    assert after["caption"].str.contains(shown.format("renamed hair")).any()
    assert not after["caption"].str.contains(shown.format("long hair")).any()


@pytest.mark.parametrize("changes", [
    {}, {"keep_separator": None}, {"tag_order": "alpha"}, {"year_number": True, "blacklist": ("long_hair",)},
])
def test_prepared_tags_read_back_as_stored(migrated: Path, changes: dict) -> None:
    import numpy as np

    from kohaku_data.captions import summaries
    from kohaku_data.captions.frame import read_tag_table
    from kohaku_data.captions.layout import prepare_tags

    config = CaptionConfig(**changes)
    with DanbooruDB.open(migrated, readonly=True) as db:
        prepared = prepare_tags(read_tag_table(db.connection()), config)
    back = summaries.decode_prepared_tags(summaries.encode_prepared_tags(prepared))
    assert np.array_equal(back.tag_index.keys, prepared.tag_index.keys)
    for field in ("rank_pairs", "group", "codes"):
        assert np.array_equal(getattr(back, field), getattr(prepared, field)), field
    assert back.strings.equals(prepared.strings) and back.strings.n_chunks() == 1
    assert (back.extra_rows, back.rest, back.prefixed_offset) == (
        prepared.extra_rows, prepared.rest, prepared.prefixed_offset)
    blob = summaries.encode_prepared_tags(prepared)
    header = json.loads(blob[4:4 + int.from_bytes(blob[:4], "little")])
    other = json.dumps({**header, "format": 0}).encode()
    assert summaries.decode_prepared_tags(len(other).to_bytes(4, "little") + other) is None  # another layout


def test_refresh_drops_stale_and_retired_summaries(migrated: Path) -> None:
    from kohaku_data.captions.summaries import RETIRED_KINDS

    with DanbooruDB.open(migrated) as db:
        assert summary.store(db, "custom:current", {"kept": True})
    _external_write(migrated, "UPDATE post SET score = score + 1 WHERE id = (SELECT min(id) FROM post)")
    with DanbooruDB.open(migrated) as db:
        assert summary.store(db, "custom:after", {"kept": True})  # computed after the write
        assert summary.store(db, f"{RETIRED_KINDS[0]}:0123456789abcdef", b"current, but nothing reads it")
        summary.refresh(db, SUMMARY_KEEPERS)
    stored = _stored(migrated)
    assert "custom:after" in stored and "custom:current" not in stored  # stale: never served again
    assert not any(name.startswith(f"{RETIRED_KINDS[0]}:") for name in stored)
    assert INFO_SUMMARY in stored


def test_migrate_after_an_upgrade_stores_the_summaries_this_version_keeps(migrated: Path) -> None:
    # A file whose summaries an older kdata stored: current, but without this version's kinds.
    with sqlite3.connect(migrated) as conn:  # kdata_summary is kdata's own: no counted write
        conn.execute("DELETE FROM kdata_summary WHERE name NOT IN (?, ?)", (INFO_SUMMARY, "stats"))
    with DanbooruDB.open(migrated) as db:
        assert not summary.up_to_date(db, SUMMARY_KEEPERS)
        assert migrate(db, keepers=SUMMARY_KEEPERS) == []  # nothing pending, yet the summaries are stored again
        assert summary.up_to_date(db, SUMMARY_KEEPERS)
    assert thresholds_name(Recipe().caption) in _stored(migrated)


def test_db_keepers_alone_keep_the_db_summaries_and_leave_the_caption_ones_due(migrated: Path) -> None:
    """db/ refreshes only what it is given: its own keepers by default, never the captions' by
    itself, and a refresh by fewer keepers does not count as one by all of them."""
    _external_write(migrated, "UPDATE post SET score = score + 1 WHERE id = (SELECT min(id) FROM post)")
    with DanbooruDB.open(migrated) as db:
        stored = summary.refresh(db, DB_KEEPERS)
        assert INFO_SUMMARY in stored and not any(name.startswith("thresholds:") for name in stored)
        assert summary.up_to_date(db, DB_KEEPERS) and not summary.up_to_date(db, SUMMARY_KEEPERS)
        assert migrate(db) == [] and summary.read(db, thresholds_name(Recipe().caption)) is None
        assert migrate(db, keepers=SUMMARY_KEEPERS) == []  # the caption summaries were due: stored now
        assert summary.read(db, thresholds_name(Recipe().caption)) is not None
        assert summary.up_to_date(db, SUMMARY_KEEPERS)


def test_import_into_a_migrated_file_rebuilds_the_query_index(migrated: Path, posts_sample_path: Path) -> None:
    from kohaku_data.db.query_bits import open_bits

    with DanbooruDB.open(migrated) as db:
        assert open_bits(db.connection()) is not None
        import_files(db, [posts_sample_path])  # new posts and relations retire the index...
        assert open_bits(db.connection()) is not None  # ...and the summary refresh rebuilds it
