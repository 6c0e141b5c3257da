"""Migrations on files made from the published DDL (and from the older DDL without updated_at)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from kohaku_data.db import DanbooruDB
from kohaku_data.db.handle import published_schema_sql
from kohaku_data.db.migrate import MigrationError, available, current_version, migrate, migrations_dir

OLD_DDL = published_schema_sql().replace(', "updated_at" VARCHAR(255) NOT NULL', "")
OLD_ROW = ("INSERT INTO post VALUES (5,'2010-01-01T00:00:00.000-05:00',1,'',NULL,NULL,0,0,0,NULL,0,0,0,0,"
           "3,4,5,'jpg',2,1,1,0,9,NULL,NULL,NULL)")


def published_columns(table: str) -> list[tuple[str, str, int]]:
    """(name, type, notnull) of a table as the published DDL declares it."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(published_schema_sql())
    cols = [(r[1], r[2], r[3]) for r in conn.execute(f"PRAGMA table_info({table})")]
    conn.close()
    return cols


def make_old_copy(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_DDL)
        conn.execute(OLD_ROW)
        conn.execute("INSERT INTO tag VALUES (1, 'solo', 0, 1)")
        conn.execute("INSERT INTO posttagrelation VALUES (1, 5, 1)")
    conn.close()
    return path


def test_migrations_folder_is_found_and_ordered():
    found = available()
    assert found and migrations_dir().name == "migrations"
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert {"0001_kdata_tables", "0002_post_updated_at"} <= {m.name for m in found}


def test_migrate_twice_is_a_noop(empty_db):
    assert current_version(empty_db) == 0
    applied = migrate(empty_db)
    assert applied == [m.name for m in available()]
    assert current_version(empty_db) == available()[-1].version
    schema = empty_db.connection().execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert migrate(empty_db) == []
    assert empty_db.connection().execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
    recorded = empty_db.connection().execute("SELECT version, name FROM kdata_schema_version").fetchall()
    assert sorted(recorded) == [(m.version, m.name) for m in available()]
    for table in ("kdata_tag_alias", "kdata_sync_state", "kdata_schema_version"):
        assert empty_db.has_table(table)


def test_published_columns_untouched(empty_db):
    migrate(empty_db)
    for table in ("post", "tag", "posttagrelation"):
        cols = [(r[1], r[2], r[3]) for r in empty_db.connection().execute(f"PRAGMA table_info({table})")]
        assert cols == published_columns(table)


def test_old_copy_gets_updated_at_and_stays_readable(tmp_path):
    path = make_old_copy(tmp_path / "old.db")
    with DanbooruDB.open(path) as db:
        assert not db.has_updated_at
        assert "0002_post_updated_at" in migrate(db)
        # The open handle sees the new column at once.
        assert db.has_updated_at
        assert db.Post.get_by_id(5).updated_at == "2010-01-01T00:00:00.000-05:00"
    # Published column set, in the published order; readable with plain sqlite3 ...
    conn = sqlite3.connect(path)
    cols = [(r[1], r[2], r[3]) for r in conn.execute("PRAGMA table_info(post)")]
    assert cols == published_columns("post")
    names = ", ".join(f'"{c[0]}"' for c in published_columns("post"))
    (row,) = conn.execute(f"SELECT {names} FROM post").fetchall()
    assert row[0] == 5 and row[-1] == row[1]
    assert conn.execute("SELECT count(*) FROM post WHERE updated_at = ''").fetchone()[0] == 0
    conn.close()
    # ... and with a fresh handle.
    with DanbooruDB.open(path, readonly=True) as db:
        assert db.has_updated_at and db.Post.get_by_id(5).fav_count == 9
        assert current_version(db) == available()[-1].version


def test_failed_migration_rolls_back(tmp_path, empty_db):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_kdata_tables.py").write_text((migrations_dir() / "0001_kdata_tables.py").read_text())
    (folder / "0002_broken.py").write_text(
        "def migrate(db):\n"
        "    db.connection().execute('CREATE TABLE kdata_half_done (x)')\n"
        "    raise RuntimeError('boom')\n"
    )
    with pytest.raises(MigrationError, match=r"0002_broken failed.*boom.*version 1"):
        migrate(empty_db, folder)
    assert current_version(empty_db) == 1
    assert not empty_db.has_table("kdata_half_done")


def test_duplicate_numbers_and_readonly_are_errors(tmp_path, empty_db):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("0001_a.py", "0001_b.py"):
        (folder / name).write_text("def migrate(db):\n    pass\n")
    with pytest.raises(MigrationError, match="two migrations numbered 0001"):
        migrate(empty_db, folder)
    empty_db.close()
    with DanbooruDB.open(empty_db.path, readonly=True) as ro:
        with pytest.raises(MigrationError, match=re.escape("kdata db migrate")):
            migrate(ro)


def test_query_and_caption_indexes_replace_the_published_ones_under_their_names(empty_db):
    """0003/0004 turn the published single-column relation indexes into covering ones (same
    names, same leading column) instead of adding twins; running again changes nothing."""
    conn = empty_db.connection()

    def relation_indexes() -> dict[str, list[str]]:
        names = [r[1] for r in conn.execute("PRAGMA index_list(posttagrelation)")]
        return {n: [r[2] for r in conn.execute(f'PRAGMA index_info("{n}")')] for n in names}

    assert relation_indexes() == {"posttagrelation_post_id": ["post_id"], "posttagrelation_tag_id": ["tag_id"]}
    migrate(empty_db)
    expected = {"posttagrelation_post_id": ["post_id", "tag_id"], "posttagrelation_tag_id": ["tag_id", "post_id"]}
    assert relation_indexes() == expected
    migrate(empty_db)
    assert relation_indexes() == expected
