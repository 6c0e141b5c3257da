"""Importers on real sqlite files: upserts, file formats, rejects, idempotency, kill + rerun."""

from __future__ import annotations

import copy
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kohaku_data.db import DanbooruDB, Rating, TagType
from kohaku_data.db.enums import TAG_STRING_FIELDS
from kohaku_data.db.handle import published_schema_sql
from kohaku_data.db.importer import RecordError, import_files, upsert_posts


# -- helpers ----------------------------------------------------------------------------------
def load_sample(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def dump(db_path: Path) -> dict:
    """Everything that defines the DB's content, independent of row ids."""
    conn = sqlite3.connect(db_path)
    try:
        return {
            "posts": conn.execute("SELECT * FROM post ORDER BY id").fetchall(),
            "tags": conn.execute("SELECT name, type, popularity FROM tag ORDER BY name").fetchall(),
            "relations": conn.execute(
                "SELECT r.post_id, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
                "ORDER BY r.post_id, t.name"
            ).fetchall(),
            "aliases": conn.execute("SELECT alias, tag_name FROM kdata_tag_alias ORDER BY alias").fetchall()
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name='kdata_tag_alias'").fetchone() else [],
        }
    finally:
        conn.close()


def assert_popularity_matches_relations(conn: sqlite3.Connection) -> None:
    wrong = conn.execute(
        "SELECT t.name, t.popularity, count(r.id) FROM tag t LEFT JOIN posttagrelation r ON r.tag_id = t.id "
        "GROUP BY t.id HAVING t.popularity != count(r.id)"
    ).fetchall()
    assert wrong == []


def post_tags(conn: sqlite3.Connection, post_id: int) -> dict[str, int]:
    return dict(conn.execute(
        "SELECT t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE r.post_id = ?",
        (post_id,),
    ).fetchall())


def expected_tags(post: dict) -> dict[str, int]:
    return {name: int(t) for field, t in TAG_STRING_FIELDS.items() for name in post[field].split()}


def synthetic_posts(sample: list[dict], n: int) -> list[dict]:
    """n distinct posts made from the real ones (ids and tag mixes vary)."""
    out = []
    for i in range(n):
        post = copy.deepcopy(sample[i % len(sample)])
        post["id"] = 10_000_000 + i
        post["tag_string_general"] += f" extra_{i % 37} shared_tag"
        out.append(post)
    return out


def write_jsonl(path: Path, posts: list, gz: bool = False) -> Path:
    lines = "".join((p if isinstance(p, str) else json.dumps(p)) + "\n" for p in posts)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(lines)
    else:
        path.write_text(lines)
    return path


# -- the 10 real posts --------------------------------------------------------------------------
def test_real_posts_tags_ratings_popularity(empty_db, posts_sample_path):
    posts = load_sample(posts_sample_path)
    counts = upsert_posts(empty_db, posts)
    assert (counts.inserted, counts.updated, counts.unchanged) == (10, 0, 0)
    conn = empty_db.connection()
    for post in posts:
        assert post_tags(conn, post["id"]) == expected_tags(post)
        row = empty_db.Post.get_by_id(post["id"])
        assert row.rating == Rating.from_letter(post["rating"])
        assert (row.has_large, row.is_deleted) == (int(post["has_large"]), int(post["is_deleted"]))
        assert (row.md5, row.updated_at, row.score) == (post["md5"], post["updated_at"], post["score"])
    tag = empty_db.Tag.get(empty_db.Tag.name == "ekz_(robotekz)")
    assert tag.type == TagType.ARTIST
    assert empty_db.Tag.get(empty_db.Tag.name == "lady_zuri").type == TagType.CHARACTER
    assert empty_db.Tag.get(empty_db.Tag.name == "absurdres").type == TagType.META
    assert_popularity_matches_relations(conn)
    total = sum(len(expected_tags(p)) for p in posts)
    assert conn.execute("SELECT sum(popularity) FROM tag").fetchone()[0] == total


def test_same_posts_twice_change_nothing(empty_db, posts_sample_path, tmp_path):
    import_files(empty_db, [posts_sample_path], rejects_path=tmp_path / "rej.jsonl")
    before = dump(empty_db.path)
    summary = import_files(empty_db, [posts_sample_path], rejects_path=tmp_path / "rej.jsonl")
    assert (summary.posts.inserted, summary.posts.updated, summary.posts.unchanged) == (0, 0, 10)
    assert dump(empty_db.path) == before
    assert not (tmp_path / "rej.jsonl").exists()


def test_newer_updated_at_replaces_fields_and_tag_set(empty_db, posts_sample_path):
    posts = load_sample(posts_sample_path)
    upsert_posts(empty_db, posts)
    conn = empty_db.connection()
    post = copy.deepcopy(posts[0])
    dropped = post["tag_string_general"].split()[0]
    post["tag_string_general"] = " ".join(post["tag_string_general"].split()[1:] + ["brand_new_tag"])
    post["tag_string_artist"] = ""
    post["score"], post["rating"] = 99, "e"
    # Same instant written with another offset is not newer; one second later is.
    older_twin = dict(post, updated_at="2023-03-17T07:50:48.762+00:00")
    assert upsert_posts(empty_db, [older_twin]).unchanged == 1
    assert empty_db.Post.get_by_id(post["id"]).score == posts[0]["score"]
    post["updated_at"] = "2023-03-17T07:50:49.762+00:00"
    counts = upsert_posts(empty_db, [post])
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, 0)
    row = empty_db.Post.get_by_id(post["id"])
    assert (row.score, row.rating, row.updated_at) == (99, Rating.EXPLICIT, post["updated_at"])
    tags = post_tags(conn, post["id"])
    assert tags == expected_tags(post)
    assert dropped not in tags and "ekz_(robotekz)" not in tags
    assert tags["brand_new_tag"] == TagType.GENERAL
    assert empty_db.Tag.get(empty_db.Tag.name == "ekz_(robotekz)").popularity == 0
    assert_popularity_matches_relations(conn)
    # An older version arriving later changes nothing.
    assert upsert_posts(empty_db, [posts[0]]).unchanged == 1
    assert post_tags(conn, post["id"]) == tags


def test_duplicates_in_one_batch_keep_the_newest(empty_db, posts_sample_path):
    post = load_sample(posts_sample_path)[0]
    newer = dict(post, score=7, updated_at="2024-01-01T00:00:00.000+00:00", tag_string_meta="highres")
    counts = upsert_posts(empty_db, [post, newer, post])
    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 1, 1)
    assert empty_db.Post.get_by_id(post["id"]).score == 7
    assert "absurdres" not in post_tags(empty_db.connection(), post["id"])
    assert_popularity_matches_relations(empty_db.connection())


@pytest.mark.parametrize(
    "change, reason",
    [({"id": None}, "id"), ({"rating": "x"}, "rating"), ({"score": "10"}, "score"),
     ({"tag_string_general": 5}, "tag_string_general"), ({"created_at": None}, "created_at")],
)
def test_bad_record_raises_and_writes_nothing(empty_db, posts_sample_path, change, reason):
    posts = load_sample(posts_sample_path)
    bad = dict(posts[1], **change)
    with pytest.raises(RecordError, match=reason):
        upsert_posts(empty_db, [posts[0], bad])
    assert empty_db.Post.select().count() == 0


def test_missing_updated_at_is_filled_from_created_at(empty_db, posts_sample_path):
    post = load_sample(posts_sample_path)[0]
    del post["updated_at"]
    upsert_posts(empty_db, [post])
    assert empty_db.Post.get_by_id(post["id"]).updated_at == post["created_at"]


# -- file formats -----------------------------------------------------------------------------------
def test_jsonl_gz_and_array_give_the_same_db(tmp_path, posts_sample_path):
    posts = load_sample(posts_sample_path)
    sources = {
        "array": posts_sample_path,
        "jsonl": write_jsonl(tmp_path / "p.jsonl", posts),
        "gz": write_jsonl(tmp_path / "p.jsonl.gz", posts, gz=True),
    }
    dumps = {}
    for name, source in sources.items():
        with DanbooruDB.create(tmp_path / f"{name}.db") as db:
            summary = import_files(db, [source])
        assert summary.posts.inserted == 10 and summary.rejected == 0
        dumps[name] = dump(tmp_path / f"{name}.db")
    assert dumps["array"] == dumps["jsonl"] == dumps["gz"]
    assert len(dumps["array"]["posts"]) == 10


def test_tag_csv_types_aliases_and_popularity(empty_db, posts_sample_path, tmp_path):
    upsert_posts(empty_db, load_sample(posts_sample_path))
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text(
        '1girl,0,6008644,"1girls,sole_female"\n'
        'lady_zuri,4,120,"zuri"\n'          # character (Danbooru category 4)
        'ekz_(robotekz),1,55,\n'
        'brand_new_copyright,3,9000,"bnc"\n'
        'not_a_tag,9,1,\n'                   # unknown category
        'also bad,0,1\n'                    # space in name
        'highres,5,5256195,"high_res,hires"\n'
    )
    summary = import_files(empty_db, [csv_path], rejects_path=tmp_path / "rej.jsonl")
    assert summary.tags.inserted == 1 and summary.rejected == 2
    tag = empty_db.Tag
    new = tag.get(tag.name == "brand_new_copyright")
    assert (new.type, new.popularity) == (TagType.COPYRIGHT, 0)  # popularity = relations, not the CSV
    assert tag.get(tag.name == "lady_zuri").type == TagType.CHARACTER
    girl = tag.get(tag.name == "1girl")
    assert girl.popularity == tag.select().join_from(tag, empty_db.PostTagRelation, on=(
        empty_db.PostTagRelation.tag_id == tag.id)).where(tag.name == "1girl").count()
    aliases = dict(empty_db.connection().execute("SELECT alias, tag_name FROM kdata_tag_alias").fetchall())
    assert aliases == {"1girls": "1girl", "sole_female": "1girl", "zuri": "lady_zuri", "bnc": "brand_new_copyright",
                       "high_res": "highres", "hires": "highres"}
    rejects = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [5, 6]
    assert "category" in rejects[0]["reason"] and rejects[1]["record"] == ["also bad", "0", "1"]
    assert_popularity_matches_relations(empty_db.connection())


def test_bad_records_go_to_rejects_with_line_numbers(empty_db, posts_sample_path, tmp_path):
    posts = load_sample(posts_sample_path)
    lines = [posts[0], "{broken json", dict(posts[1], id=None), "", dict(posts[2], rating="z"),
             dict(posts[3], image_width="wide"), posts[4], "[1, 2]"]
    source = write_jsonl(tmp_path / "mixed.jsonl", lines)
    rejects_path = tmp_path / "out" / "rejects.jsonl"
    summary = import_files(empty_db, [source], rejects_path=rejects_path, batch_size=2)
    assert summary.posts.inserted == 2 and summary.rejected == 5
    assert summary.rejects_path == rejects_path
    rejects = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 3, 5, 6, 8]
    assert {r["file"] for r in rejects} == {str(source)}
    assert rejects[0]["record"] == "{broken json" and "JSON" in rejects[0]["reason"]
    assert "id" in rejects[1]["reason"] and rejects[1]["record"]["md5"] == posts[1]["md5"]
    assert "rating" in rejects[2]["reason"] and "image_width" in rejects[3]["reason"]
    assert sorted(p.id for p in empty_db.Post.select()) == sorted([posts[0]["id"], posts[4]["id"]])


def test_array_rejects_carry_the_line_of_the_element(empty_db, posts_sample_path, tmp_path):
    posts = load_sample(posts_sample_path)[:3]
    posts[1]["rating"] = "?"
    source = tmp_path / "page.json"
    source.write_text(json.dumps(posts, indent=1))
    summary = import_files(empty_db, [source], rejects_path=tmp_path / "r.jsonl")
    (reject,) = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    text_lines = source.read_text().splitlines()
    assert text_lines[reject["line"] - 1].strip() == "{"
    assert text_lines[reject["line"]].strip() == f'"id": {posts[1]["id"]},'
    assert summary.posts.inserted == 2


# -- old copies without updated_at ------------------------------------------------------------------
def old_copy(path: Path) -> Path:
    ddl = published_schema_sql().replace(', "updated_at" VARCHAR(255) NOT NULL', "")
    with sqlite3.connect(path) as conn:
        conn.executescript(ddl)
    conn.close()
    return path


def test_upsert_into_old_copy_compares_content(tmp_path, posts_sample_path):
    posts = load_sample(posts_sample_path)
    with DanbooruDB.open(old_copy(tmp_path / "old.db")) as db:
        assert not db.has_updated_at
        assert upsert_posts(db, posts).inserted == 10
        assert upsert_posts(db, posts).unchanged == 10
        changed = dict(posts[0], score=1234)
        assert upsert_posts(db, [changed]).updated == 1
        assert db.Post.get_by_id(changed["id"]).score == 1234
        assert_popularity_matches_relations(db.connection())


def test_import_files_migrates_an_old_copy(tmp_path, posts_sample_path):
    with DanbooruDB.open(old_copy(tmp_path / "old.db")) as db:
        summary = import_files(db, [posts_sample_path])
        assert "0002_post_updated_at" in summary.migrations_applied
        assert db.has_updated_at
        assert db.Post.get_by_id(6148688).updated_at == "2023-03-17T03:50:48.762-04:00"


# -- kill mid-import, rerun --------------------------------------------------------------------------
_KILLED_CHILD = r"""
import sys, time
from pathlib import Path
from kohaku_data.db import DanbooruDB
from kohaku_data.db import importer

marker = Path(sys.argv[3])
calls = []

def stalling(original):
    def slow_run(self, parsed):
        # After 3 committed batches, stall inside the 4th batch's open transaction (rows
        # written, not committed) and say so: the parent kills us there.
        result = original(self, parsed)
        calls.append(1)
        if len(calls) == 4:
            marker.write_text("in transaction")
            time.sleep(60)
        return result
    return slow_run

# Batches are written by the per-record writer or by the columnar one: stall in either.
importer._Batch.run = stalling(importer._Batch.run)
importer.FrameWriter.run = stalling(importer.FrameWriter.run)
db = DanbooruDB.open(sys.argv[1])
importer.import_files(db, [Path(sys.argv[2])], batch_size=50, defer=True)
"""


def test_killed_import_then_rerun_equals_clean_import(tmp_path, posts_sample_path):
    posts = synthetic_posts(load_sample(posts_sample_path), 400)
    source = write_jsonl(tmp_path / "big.jsonl", posts)
    with DanbooruDB.create(tmp_path / "clean.db") as db:
        import_files(db, [source], batch_size=50)
    killed = tmp_path / "killed.db"
    DanbooruDB.create(killed).close()
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(killed), str(source), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the importing child exited before being killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    conn = sqlite3.connect(killed)
    assert conn.execute("SELECT count(*) FROM post").fetchone()[0] == 150  # 3 committed batches
    assert_popularity_matches_relations(conn)
    # The bulk import had dropped its secondary indexes; their DDL survived the kill.
    deferred = {r[0] for r in conn.execute("SELECT name FROM kdata_deferred_index")}
    assert "posttagrelation_tag_id" in deferred
    # All of them: the published ones and those of the migrations (0003, 0004, ...).
    clean = sqlite3.connect(tmp_path / "clean.db")
    assert deferred == {name for (name,) in clean.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('post', 'posttagrelation')")}
    clean.close()
    conn.close()
    with DanbooruDB.open(killed) as db:
        summary = import_files(db, [source], batch_size=50)
    assert (summary.posts.inserted, summary.posts.unchanged) == (250, 150)
    assert dump(killed) == dump(tmp_path / "clean.db")
    assert schema(killed) == schema(tmp_path / "clean.db")


def schema(path: Path) -> list:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    return rows


def test_deferred_bulk_import_equals_row_by_row(tmp_path, posts_sample_path):
    source = write_jsonl(tmp_path / "p.jsonl", synthetic_posts(load_sample(posts_sample_path), 120))
    for defer in (True, False):
        with DanbooruDB.create(tmp_path / f"{defer}.db") as db:
            import_files(db, [source], batch_size=40, defer=defer)
            assert not db.has_table("kdata_deferred_index")
    assert dump(tmp_path / "True.db") == dump(tmp_path / "False.db")
    assert schema(tmp_path / "True.db") == schema(tmp_path / "False.db")


# -- columnar fast path vs per-record path -----------------------------------------------------------
def tricky_posts(sample: list[dict]) -> list[dict]:
    """Posts the columnar path must take and treat exactly like `parse_post` + `_Batch`."""
    posts = synthetic_posts(sample, 30)
    posts[0]["tag_string_character"] += " shared_tag"       # in two strings: general (first) wins
    posts[1]["tag_string_meta"] = "shared_tag  dup dup"     # double space, a name twice
    posts[2]["tag_string_artist"] = "typed_late"
    posts[5]["tag_string_general"] += " typed_late"         # new tag: the last post's type wins
    del posts[3]["updated_at"]                              # filled from created_at
    posts[4]["has_large"] = None                            # null bool: 0
    posts[4]["source"] = None                               # null source: ''
    posts[6]["tag_string_copyright"] = ""
    posts[7]["md5"] = "1234"                                # text that merely looks numeric
    for post in posts[28:]:                                 # a batch (of 7) without any tag
        post.update(dict.fromkeys(TAG_STRING_FIELDS, ""))
    return posts


def test_columnar_batches_equal_per_record_upserts(tmp_path, posts_sample_path):
    from kohaku_data.db.importer import read_frame

    posts = tricky_posts(load_sample(posts_sample_path))
    source = write_jsonl(tmp_path / "p.jsonl", posts)
    assert read_frame(source.read_bytes().splitlines(keepends=True)) is not None  # the fast path is taken
    with DanbooruDB.create(tmp_path / "fast.db") as db:
        summary = import_files(db, [source], batch_size=7)
        assert (summary.posts.inserted, summary.rejected) == (30, 0)
        assert_popularity_matches_relations(db.connection())
    with DanbooruDB.create(tmp_path / "slow.db") as db:
        import_files(db, [posts_sample_path])  # migrations; then the same posts record by record
        db.connection().execute("DELETE FROM posttagrelation")
        db.connection().execute("DELETE FROM post")
        db.connection().execute("DELETE FROM tag")
        for start in range(0, 30, 7):
            upsert_posts(db, posts[start:start + 7])
    assert dump(tmp_path / "fast.db") == dump(tmp_path / "slow.db")
    conn = sqlite3.connect(tmp_path / "fast.db")
    assert conn.execute("SELECT type FROM tag WHERE name = 'shared_tag'").fetchone()[0] == TagType.GENERAL
    assert conn.execute("SELECT type FROM tag WHERE name = 'typed_late'").fetchone()[0] == TagType.GENERAL
    assert conn.execute("SELECT has_large, source FROM post WHERE id = ?", (posts[4]["id"],)).fetchone() == (0, "")
    conn.close()


@pytest.mark.parametrize(
    "change",
    [{"md5": 5}, {"source": {"a": 1}}, {"tag_string_general": 5}, {"score": "10"}, {"score": 10.5},
     {"has_children": 1}, {"rating": 2}, {"tag_string_meta": "a\tb"}, {"id": None}, {"created_at": None},
     {"tag_string_general": None, "tag_string_artist": None, "tag_string_character": None,
      "tag_string_copyright": None, "tag_string_meta": None}],
)
def test_columnar_path_leaves_doubtful_batches_to_the_record_path(tmp_path, posts_sample_path, change):
    from kohaku_data.db.importer import read_frame

    posts = load_sample(posts_sample_path)
    odd = dict(posts[1], **change)
    lines = [json.dumps(p).encode() + b"\n" for p in (posts[0], odd, posts[2])]
    assert read_frame(lines) is None
    source = tmp_path / "p.jsonl"
    source.write_bytes(b"".join(lines))
    with DanbooruDB.create(tmp_path / "a.db") as db:
        summary = import_files(db, [source], rejects_path=tmp_path / "rej.jsonl")
    with DanbooruDB.create(tmp_path / "b.db") as db:
        try:
            upsert_posts(db, [odd])
            accepted = True
        except RecordError:
            accepted = False
    assert summary.posts.inserted == 2 + accepted and summary.rejected == (not accepted)
    if not accepted:
        (reject,) = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
        assert reject["line"] == 2


def test_newer_version_in_a_later_batch_of_a_deferred_import(tmp_path, posts_sample_path):
    posts = synthetic_posts(load_sample(posts_sample_path), 60)
    newer = dict(posts[3], score=77, updated_at="2030-01-01T00:00:00.000+00:00", tag_string_meta="only_new")
    source = write_jsonl(tmp_path / "p.jsonl", posts + [newer])
    for defer in (True, False):
        with DanbooruDB.create(tmp_path / f"{defer}.db") as db:
            summary = import_files(db, [source], batch_size=20, defer=defer)
            assert (summary.posts.inserted, summary.posts.updated) == (60, 1)
            assert not db.has_table("kdata_deferred_index")
            assert_popularity_matches_relations(db.connection())
    assert dump(tmp_path / "True.db") == dump(tmp_path / "False.db")
    assert schema(tmp_path / "True.db") == schema(tmp_path / "False.db")
    assert ("only_new",) in [(t,) for _, t in dump(tmp_path / "True.db")["relations"] if _ == newer["id"]]


def test_deferred_indexes_cover_every_migration_and_restore_one_by_one(tmp_path, posts_sample_path):
    from kohaku_data.db.migrate import defer_indexes, deferred_indexes, migrate, restore_deferred_indexes

    with DanbooruDB.create(tmp_path / "d.db") as db:
        migrate(db)
        secondary = {name for (name,) in db.connection().execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name IN ('post', 'posttagrelation')")}
        assert {"kdata_post_meta", "posttagrelation_tag_id", "posttagrelation_post_id"} <= secondary
        before = schema(db.path)
        assert set(defer_indexes(db)) == secondary == set(deferred_indexes(db))
        assert restore_deferred_indexes(db, {"posttagrelation_post_id"}) == ["posttagrelation_post_id"]
        assert set(deferred_indexes(db)) == secondary - {"posttagrelation_post_id"}
        assert migrate(db, keep_deferred=True) == [] and set(deferred_indexes(db)) == secondary - {"posttagrelation_post_id"}
        migrate(db)
        assert deferred_indexes(db) == [] and not db.has_table("kdata_deferred_index")
    assert schema(tmp_path / "d.db") == before
