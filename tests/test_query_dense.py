"""Issue 20: the metatags answered from the dense columns of the bitmap index (layout 4) and
the source index of migration 0014 give exactly what the plain SQL gives, through every path
(counts, whole results, id windows, gathers for candidates), including SQL's NULL logic for
pixiv_id and created_at's string comparison for date:/age:."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kohaku_data.db import DanbooruDB
from kohaku_data.db import query as query_mod
from kohaku_data.db import query_bits
from kohaku_data.db.migrate import migrate as run_migrations
from kohaku_data.db.query import _order_terms, count_posts, query_ids
from kohaku_data.db.query_plan import make_plan, tree_sql
from kohaku_data.db.query_bits import date_bound, open_bits
from kohaku_data.sample.metadata import write_sample_db

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"

QUERIES = [
    "filesize:>1mb", "filesize:100kb..2mb", "filesize:1mb", "-filesize:<500kb", "upvotes:>5",
    "upvotes:0", "downvotes:>=1", "width:>=1024 height:<1000", "has:source", "-has:source",
    "source:none", "source:https://*pixiv*", "source:HTTPS://WWW.PIXIV*", "-source:https://*",
    "source:*twitter*", "source:https://x.com/*", "pixiv_id:>1000", "-pixiv_id:>1000",
    "pixiv_id:1..50000000", "-pixiv_id:1,2,3", "pixiv_id:any", "pixiv_id:none",
    "-(pixiv_id:>1000 rating:g)", "(pixiv_id:<5 or score:>3)", "-(pixiv_id:<5 or score:>3)",
    "is:parent", "is:child", "parent:any", "parent:none", "child:none", "-is:parent",
    "is:banned", "is:sfw is:png", "is:nsfw", "filetype:png,gif", "-filetype:jpg", "is:webp",
    "age:>1y", "age:<20y", "date:2020-01-01..2021-06-30", "-date:2020-01-01..2021-06-30",
    "year:2019", "date:2021-03-04", "date:>2022-01-01", "date:<=2010-01-01",
    "gentags:<10", "gentags:<10 1girl", "1girl is:parent", "1girl filesize:>1mb -has:source",
    "solo age:>3y", "status:any filesize:>1mb", "status:deleted upvotes:>2", "is:active is:child",
    "long_hair source:https://*pixiv* order:score", "1girl order:filesize",
]


def plain(db: DanbooruDB, text: str) -> list[int]:
    """The plain SQL of the query on `post` (select_posts without peewee's table alias, which
    the tag-count metatags' correlated subqueries cannot name)."""
    plan = make_plan(db, text)
    where, params = tree_sql(plan.tree)
    order = ", ".join(_order_terms(plan.query.order))
    return [r[0] for r in db.connection().execute(
        f"SELECT id FROM post WHERE {where} ORDER BY {order}", params)]


def migrated_sample(path: Path, posts: int, seed: int, *statements: str) -> DanbooruDB:
    """A `kdata sample` DB with `statements` run on the published file (odd values the sample
    never makes), then migrated (the bitmap index built over those values)."""
    write_sample_db(path, posts=posts, seed=seed)
    with sqlite3.connect(path) as conn:
        for sql in statements:
            conn.execute(sql)
    handle = DanbooruDB.open(path)
    run_migrations(handle, MIGRATIONS)
    return handle


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    handle = migrated_sample(tmp_path_factory.mktemp("dense") / "d.db", 6000, 3,
                             "UPDATE post SET source = 'HTTPS://WWW.PIXIV.net/x' WHERE id % 97 = 0",
                             "UPDATE post SET pixiv_id = 0 WHERE id % 89 = 0",
                             "UPDATE post SET pixiv_id = NULL WHERE id % 83 = 0")
    yield handle
    handle.close()


def test_layout_4_has_the_dense_columns(db) -> None:
    bits = open_bits(db.connection())
    assert bits is not None
    # every date: form is a compare over the date column, never a read of created_at
    for text in ("date:2020-01-01..2021-12-31", "year:2019", "date:2021-03-04", "age:<5y"):
        assert query_mod._bits_meta(bits, query_mod.make_plan(db, text).tree.children[0].expr) is not None, text
    for name in ("filesize", "upvotes", "downvotes", "width", "height", "pixiv_id", "flags",
                 "filetype", "date"):
        assert bits.has(name), name
    assert "png" in bits.vocab("filetype")
    assert open_bits(db.connection()) is bits  # kept for the connection


@pytest.mark.parametrize("engine", ["bits", "arrays", "gather", "probe", "windows"])
def test_dense_metatags_match_plain_sql(db, engine, monkeypatch) -> None:
    if engine == "bits":  # every query on the bitmap index
        monkeypatch.setattr(query_mod, "_bits_for", lambda conn, plan: open_bits(conn))
    else:
        monkeypatch.setattr(query_mod, "_bits_for", lambda conn, plan: None)
    if engine == "gather":  # dense columns for every candidate list
        monkeypatch.setattr(query_mod, "_GATHER_MIN", 0)
    elif engine == "probe":  # rowid probes, no dense column
        monkeypatch.setattr(query_mod, "_GATHER_MIN", 10**9)
    for text in QUERIES:
        expected = plain(db, text)
        if engine == "windows":
            assert query_ids(db, text, limit=37) == expected[:37], text
            continue
        assert query_ids(db, text) == expected, text
        assert count_posts(db, text) == len(expected), text


def test_counts_never_read_post_rows(db) -> None:
    """The counts of the issue run on the index: no statement reads the post table by row
    (SQLite's plan shows SCAN post / SEARCH post USING INTEGER PRIMARY KEY for those)."""
    conn = db.connection()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        for text in ("filesize:>1mb", "upvotes:>5", "has:source", "pixiv_id:>1000", "is:parent",
                     "parent:any", "age:<20y", "is:sfw is:png", "source:https://*pixiv*"):
            seen.clear()
            count_posts(db, text)
            for sql in seen:
                if "FROM post" not in sql or "kdata_query_bits" in sql:
                    continue
                plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
                assert "COVERING INDEX" in plan or "USING INDEX" not in plan and "SCAN post" not in plan, (text, sql, plan)
    finally:
        conn.set_trace_callback(None)


def test_date_bound_shapes() -> None:
    assert date_bound("2020-01-02") == 20200102000000000
    assert date_bound("2020-01-02T03:04:05.678") == 20200102030405678
    assert date_bound("2020-01-02~") == 20200103000000000  # past the whole day
    assert date_bound("2020-01-02T03:04:05.678~") == 20200102030405679
    assert date_bound("2020-1-2") is None and date_bound("2020-01-02 03:04:05.678") is None


def test_date_column_left_out_when_created_at_has_another_shape(tmp_path: Path) -> None:
    handle = migrated_sample(tmp_path / "odd.db", 300, 1, "UPDATE post SET created_at = '2020-01-01 10:00:00' "
                             "WHERE id = (SELECT min(id) FROM post)")
    bits = open_bits(handle.connection())
    assert bits is not None and not bits.has("date") and bits.has("filesize")
    for text in ("date:>2020-01-01", "age:>2y", "1girl date:2015-01-01..2021-01-01"):
        assert query_ids(handle, text) == plain(handle, text), text
    handle.close()


def test_writes_to_the_new_columns_retire_the_index(db) -> None:
    conn = db.connection()
    assert open_bits(conn) is not None
    for column, value in (("file_size", 7), ("source", "'x'"), ("pixiv_id", "NULL"),
                          ("created_at", "'2001-01-01T00:00:00.000-05:00'"), ("file_ext", "'zip'")):
        with db.database.atomic():
            conn.execute(f"UPDATE post SET {column} = {value} WHERE id = (SELECT max(id) FROM post)")
        assert open_bits(conn) is None, column
        for text in ("filesize:<10", "source:x", "pixiv_id:none", "date:<2002-01-01", "filetype:zip"):
            assert count_posts(db, text) == len(plain(db, text)), (column, text)
        assert query_bits.refresh_if_stale(db)
        for text in ("filesize:<10", "source:x", "pixiv_id:none", "date:<2002-01-01", "filetype:zip"):
            assert count_posts(db, text) == len(plain(db, text)), (column, text)


def test_sample_has_the_snapshot_unknown_blocks(tmp_path: Path, monkeypatch) -> None:
    """kdata sample's posts in the unknown-flag id blocks: not deleted, no uploader, not banned,
    listed in kdata_post_unknown of a migrated file, and never hidden as deleted by a query."""
    from kohaku_data.sample import metadata
    monkeypatch.setattr(metadata, "UNKNOWN_BLOCKS", ((100, 400), (900, 950)))
    path = tmp_path / "u.db"
    handle = DanbooruDB.create(path)
    run_migrations(handle, MIGRATIONS)
    handle.close()
    write_sample_db(path, posts=1500, seed=2)
    conn = sqlite3.connect(path)
    inside = "(id >= 100 AND id < 400) OR (id >= 900 AND id < 950)"
    n, deleted, uploaders, banned = conn.execute(
        f"SELECT count(*), sum(is_deleted), sum(uploader_id), sum(is_banned) FROM post WHERE {inside}").fetchone()
    assert n > 250 and deleted == uploaders == banned == 0
    assert conn.execute(f"SELECT count(*) FROM post WHERE NOT ({inside}) AND is_deleted = 1").fetchone()[0] > 0
    listed = conn.execute("SELECT post_id, fields FROM kdata_post_unknown ORDER BY post_id").fetchall()
    assert [p for p, _ in listed] == [r[0] for r in conn.execute(f"SELECT id FROM post WHERE {inside} ORDER BY id")]
    assert {f for _, f in listed} == {"is_deleted,uploader_id,is_banned"}
    conn.close()
    handle = DanbooruDB.open(path)
    assert count_posts(handle, "id:100..399") == len([p for p, _ in listed if p < 400])
    handle.close()


SOURCE_QUERIES = ["source:https://*pixiv*", "source:HTTPS://WWW.PIXIV*", "source:*twitter*",
                  "source:https://x.com/*", "source:*pix*", "source:*ab*", "source:h*p*",
                  "source:*100%_x*", "source:*a_b*", "source:*c\\d*", "source:*émile*",
                  "-source:*pixiv*", "source:*pixiv* source:*twitter*", "1girl source:*pixiv.net*"]


def test_source_trigrams_match_the_index_path(db, monkeypatch) -> None:
    """Migration 0015: source: through the trigram table gives exactly what 0014's path gives
    (odd values: literal %, _, backslash, non-ASCII case), also after writes to post."""
    from kohaku_data.db import query_plan, source_trigrams
    conn = db.connection()
    assert source_trigrams.is_current(db)
    posts = 1 << 20  # as if the few pixiv sources were few among many posts
    where, params = query_plan._source_sql("https://*pixiv*", conn, posts)
    assert source_trigrams.TABLE in where and params[0] == "%pixiv%"  # not the common start's trigrams
    assert source_trigrams.TABLE not in query_plan._source_sql("*ab*", conn, posts)[0]
    # only a start: its index range, however wide; a narrow start: the range, whatever follows
    assert source_trigrams.TABLE not in query_plan._source_sql("https://www.pixiv.net/*", conn, posts)[0]
    assert source_trigrams.TABLE not in query_plan._source_sql("HTTPS://WWW.PIXIV.net/x*pixiv*", conn, posts)[0]
    # a run most of the file's posts hold: the scan (most of the sample's sources are https://…)
    total = conn.execute("SELECT count(*) FROM post").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM post WHERE source LIKE '%https:%'").fetchone()[0] > total / 2
    assert source_trigrams.TABLE not in query_plan._source_sql("*https:*", conn, total)[0]

    def check() -> None:
        for text in SOURCE_QUERIES:
            got = (query_ids(db, text), count_posts(db, text))
            with monkeypatch.context() as m:
                m.setattr(source_trigrams, "is_current", lambda db: False)  # 0014's path
                expected = plain(db, text)
            assert got == (expected, len(expected)), text

    with db.database.atomic():
        conn.execute("UPDATE post SET source = 'https://x/100%_x/ÉMILE/c\\d' WHERE id % 101 = 0")
        conn.execute("UPDATE post SET source = 'http://a_b.pixiv.NET/' WHERE id % 103 = 0")
    check()
    with db.database.atomic():
        conn.execute("UPDATE post SET source = 'https://TWITTER.com/pixiv' WHERE id % 107 = 0")
        conn.execute("DELETE FROM post WHERE id % 109 = 0")
    check()
    with db.database.atomic():  # the importers' update path: INSERT OR REPLACE of whole rows
        conn.execute("CREATE TEMP TABLE changed AS SELECT * FROM post WHERE id % 113 = 0")
        conn.execute("UPDATE changed SET source = 'https://www.PIXIV.net/replaced'")
        conn.execute("INSERT OR REPLACE INTO post SELECT * FROM changed")
        conn.execute("UPDATE post SET source = 'https://later.example/' WHERE id % 113 = 0")
    check()
    assert conn.execute(f"INSERT INTO {source_trigrams.TABLE}({source_trigrams.TABLE}, rank) "
                        "VALUES ('integrity-check', 1)") is not None
