import sqlite3

import pytest

from kohaku_data.db import DanbooruDB, DatabaseError
from kohaku_data.db.handle import published_schema_sql


def _insert_post(db: DanbooruDB, post_id: int) -> None:
    db.Post.insert(
        id=post_id, created_at="2020-01-01T00:00:00.000-05:00", uploader_id=1, source="",
        md5=None, parent_id=None, has_children=0, is_deleted=0, is_banned=0, pixiv_id=None,
        has_active_children=0, bit_flags=0, has_large=0, has_visible_children=0,
        image_width=10, image_height=10, file_size=1, file_ext="png", rating=0, score=0,
        up_score=0, down_score=0, fav_count=0, updated_at="2020-01-01T00:00:00.000-05:00",
    ).execute()


def test_two_databases_in_one_process(tmp_path):
    a = DanbooruDB.create(tmp_path / "a.db")
    b = DanbooruDB.create(tmp_path / "b.db")
    _insert_post(a, 1)
    _insert_post(a, 2)
    _insert_post(b, 3)
    assert a.Post is not b.Post
    assert sorted(p.id for p in a.Post.select()) == [1, 2]
    assert [p.id for p in b.Post.select()] == [3]


def test_readonly_open_never_writes(tmp_path):
    db = DanbooruDB.create(tmp_path / "d.db")
    _insert_post(db, 7)
    db.database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    before = (tmp_path / "d.db").read_bytes()
    ro = DanbooruDB.open(tmp_path / "d.db", readonly=True)
    assert ro.Post.get_by_id(7).image_width == 10
    with pytest.raises(Exception):
        _insert_post(ro, 8)
    ro.close()
    assert (tmp_path / "d.db").read_bytes() == before


def test_copy_without_updated_at_is_readable(tmp_path):
    path = tmp_path / "old.db"
    ddl = published_schema_sql().replace(', "updated_at" VARCHAR(255) NOT NULL', "")
    with sqlite3.connect(path) as conn:
        conn.executescript(ddl)
        conn.execute("INSERT INTO post VALUES (5,'2010-01-01T00:00:00.000-05:00',1,'',NULL,NULL,0,0,0,NULL,0,0,0,0,3,4,5,'jpg',2,1,1,0,9,NULL,NULL,NULL)")
    conn.close()
    with DanbooruDB.open(path, readonly=True) as db:
        assert not db.has_updated_at
        post = db.Post.get_by_id(5)
        assert (post.image_height, post.fav_count) == (4, 9)


def test_missing_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        DanbooruDB.open(tmp_path / "nope.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DatabaseError, match="cannot read"):
        DanbooruDB.open(tmp_path / "junk.db")
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE x (a)")
    conn.close()
    with pytest.raises(DatabaseError, match="not a Danbooru2023 database"):
        DanbooruDB.open(tmp_path / "other.db")
