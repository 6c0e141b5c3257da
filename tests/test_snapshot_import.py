"""`kdata db import FILE.parquet`: the published snapshot shapes and quirks, on real parquet and
sqlite files; provenance; files recognised by content; tag relations decided by their version."""

from __future__ import annotations

import ast
import copy
import json
import sqlite3
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kohaku_data.db import DanbooruDB
from kohaku_data.db.enums import TAG_STRING_FIELDS
from kohaku_data.db.importer import SnapshotPolicy, UnknownInputError, import_files
from kohaku_data.db.provenance import sources
from kohaku_data.db.snapshot import unknown_fields

sys.path.insert(0, str(Path(__file__).parent))
from cli_support import run_kdata  # noqa: E402
from test_db_import import assert_popularity_matches_relations, dump, load_sample, write_jsonl  # noqa: E402

API_FIELDS = ["id", "created_at", "updated_at", "uploader_id", "approver_id", "score", "source", "md5", "rating",
              "image_width", "image_height", "fav_count", "file_ext", "parent_id", "has_children", "tag_string",
              "tag_count", "file_size", "up_score", "down_score", "is_pending", "is_flagged", "is_deleted",
              "is_banned", "pixiv_id", "has_active_children", "bit_flags", "has_large", "has_visible_children",
              "file_url", "large_file_url", "preview_file_url", *TAG_STRING_FIELDS,
              *(f.replace("string", "count") for f in TAG_STRING_FIELDS)]
INT_FIELDS = {"id", "uploader_id", "approver_id", "score", "image_width", "image_height", "fav_count", "parent_id",
              "tag_count", "file_size", "up_score", "down_score", "pixiv_id", "bit_flags",
              *(f.replace("string", "count") for f in TAG_STRING_FIELDS)}
BOOL_FIELDS = {"has_children", "is_pending", "is_flagged", "is_deleted", "is_banned", "has_active_children",
               "has_large", "has_visible_children"}


def make_posts(sample_path: Path, n: int) -> list[dict]:
    """n distinct API posts from the 10 real ones; some with a parent, pixiv id, deleted, winter offsets."""
    sample = load_sample(sample_path)
    out = []
    for i in range(n):
        post = copy.deepcopy(sample[i % len(sample)])
        post["id"] = 4_800_000 + i
        post["tag_string_general"] += f" extra_{i % 7}"
        post["tag_string"] = " ".join(post[f] for f in TAG_STRING_FIELDS)
        post["parent_id"] = 4_700_000 + i if i % 3 == 0 else None
        post["pixiv_id"] = 90_000_000 + i if i % 4 == 0 else None
        post["is_deleted"] = i % 5 == 0
        if i % 2:
            post["created_at"] = f"2023-01-{1 + i % 28:02d}T10:00:00.{i % 1000:03d}-05:00"
            post["updated_at"] = f"2023-02-{1 + i % 28:02d}T10:00:00.000-05:00"
        out.append(post)
    return out


def _type(name: str) -> pa.DataType:
    if name in INT_FIELDS:
        return pa.int64()
    return pa.bool_() if name in BOOL_FIELDS else pa.string()


def danbooru2026(posts: list[dict], path: Path, **overrides: list) -> Path:
    """nyanko-devs/danbooru2026 posts-snapshot: flat API columns + a media_asset struct."""
    columns = {f: pa.array([p.get(f) for p in posts], _type(f)) for f in API_FIELDS}
    columns["media_asset"] = pa.array(
        [{"id": p["id"] + 1, "md5": p["md5"], "variants": [{"type": "180x180", "width": 180}]} for p in posts])
    for name, values in overrides.items():
        columns[name] = pa.array(values, columns[name].type)
    pq.write_table(pa.table(columns), path, row_group_size=max(1, len(posts) // 3))
    return path


def danbooru2025(posts: list[dict], path: Path) -> Path:
    """trojblue/danbooru2025-metadata: underscore-flattened media asset (variants as Python-literal
    text), parent/pixiv/approver ids as floats, rows by id descending, US-Eastern offsets."""
    flat = [f for f in API_FIELDS if f not in ("md5", "image_width", "image_height", "file_size", "file_ext")]
    columns: dict[str, pa.Array] = {}
    ordered = sorted(posts, key=lambda p: -p["id"])
    for f in flat:
        kind = pa.float64() if f in ("parent_id", "pixiv_id", "approver_id") else _type(f)
        values = [p.get(f) for p in ordered]
        columns[f] = pa.array([None if v is None else float(v) for v in values] if kind == pa.float64() else values, kind)
    for f in ("md5", "image_width", "image_height", "file_size", "file_ext"):
        columns[f"media_asset_{f}"] = pa.array([p[f] for p in ordered], _type(f))
    columns["media_asset_pixel_hash"] = pa.array(["0" * 32] * len(ordered))
    columns["media_asset_variants"] = pa.array(
        [repr([{"type": "180x180", "url": "https://cdn/x.jpg", "width": 180, "height": 180, "file_ext": "jpg"}])] * len(ordered))
    assert ast.literal_eval(columns["media_asset_variants"][0].as_py())[0]["width"] == 180  # not JSON
    pq.write_table(pa.table(columns), path)
    return path


def danbooru2024(posts: list[dict], path: Path) -> Path:
    """deepghs/danbooru2024 metadata.parquet: dot-flattened media asset, every number a float
    (all columns optional), the id only as the pandas index column, rows in date order."""
    ordered = sorted(posts, key=lambda p: p["created_at"])
    columns: dict[str, pa.Array] = {}
    for f in API_FIELDS:
        if f in ("id", "md5", "image_width", "image_height"):
            continue
        values = [p.get(f) for p in ordered]
        if f in INT_FIELDS:
            columns[f] = pa.array([None if v is None else float(v) for v in values], pa.float64())
        else:
            columns[f] = pa.array(values, _type(f))
    for f in ("md5", "image_width", "image_height"):
        kind = pa.float64() if f != "md5" else pa.string()
        values = [p[f] if kind == pa.string() else float(p[f]) for p in ordered]
        columns[f"media_asset.{f}"] = pa.array(values, kind)
    columns["media_asset.variants.3.width"] = pa.array([180.0] * len(ordered))
    columns["id"] = pa.array([float(p["id"]) for p in ordered], pa.float64())
    table = pa.table(columns)
    meta = {"index_columns": ["id"], "columns": [], "pandas_version": "2.2.0"}
    table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
    pq.write_table(table, path, row_group_size=max(1, len(posts) // 8))
    return path


def posts_rows(db_path: Path) -> list[tuple]:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT * FROM post ORDER BY id").fetchall()
    finally:
        conn.close()


# -- same posts from parquet and JSONL: the same DB ------------------------------------------------
@pytest.mark.parametrize("shape", [danbooru2026, danbooru2025, danbooru2024])
def test_each_published_shape_gives_the_jsonl_rows(shape, posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 40)
    jsonl_db = DanbooruDB.create(tmp_path / "jsonl.db")
    import_files(jsonl_db, [write_jsonl(tmp_path / "posts.jsonl", posts)])
    jsonl_db.close()
    db = DanbooruDB.create(tmp_path / "parquet.db")
    summary = import_files(db, [shape(posts, tmp_path / "snap.parquet")], batch_size=7)
    assert (summary.posts.inserted, summary.rejected) == (40, 0)
    assert_popularity_matches_relations(db.connection())
    db.close()
    assert dump(tmp_path / "parquet.db") == dump(tmp_path / "jsonl.db")


def test_shapes_are_named_in_the_provenance(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 5)
    db = DanbooruDB.create(tmp_path / "d.db")
    files = [danbooru2026(posts, tmp_path / "a.parquet"), danbooru2025(posts, tmp_path / "b.parquet"),
             danbooru2024(posts, tmp_path / "c.parquet")]
    import_files(db, files)
    formats = {s["name"]: s["format"] for s in sources(db)}
    assert formats == {"a.parquet": "parquet posts (flat)", "b.parquet": "parquet posts (underscore-flattened)",
                       "c.parquet": "parquet posts (dot-flattened, pandas index)"}


# -- quirks -----------------------------------------------------------------------------------------
def test_null_is_deleted_block_is_kept_as_live_and_flagged(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 12)
    nulls = [None if 3 <= i < 9 else p[f] for f in ("uploader_id",) for i, p in enumerate(posts)]
    blank = {f: [None if 3 <= i < 9 else p[f] for i, p in enumerate(posts)]
             for f in ("is_deleted", "is_pending", "is_flagged", "is_banned")}
    path = danbooru2026(posts, tmp_path / "s.parquet", uploader_id=nulls, **blank)
    db = DanbooruDB.create(tmp_path / "d.db")
    summary = import_files(db, [path])
    assert (summary.posts.inserted, summary.rejected) == (12, 0)
    conn = db.connection()
    row = conn.execute("SELECT is_deleted, uploader_id, is_banned FROM post WHERE id = ?", (posts[5]["id"],)).fetchone()
    assert row == (0, 0, 0)
    assert unknown_fields(conn, posts[5]["id"]) == ["uploader_id", "is_deleted", "is_banned"]
    assert unknown_fields(conn, posts[0]["id"]) == []
    assert conn.execute("SELECT is_deleted FROM post WHERE id = ?", (posts[0]["id"],)).fetchone() == (1,)
    policies = sources(db)[0]["policies"]
    assert "kdata_post_unknown" in policies["null_is_deleted"]

    dropped = DanbooruDB.create(tmp_path / "drop.db")
    summary = import_files(dropped, [path], policy=SnapshotPolicy(null_deleted="drop"),
                           rejects_path=tmp_path / "rej.jsonl")
    assert (summary.posts.inserted, summary.rejected) == (6, 6)
    reasons = {json.loads(line)["reason"] for line in (tmp_path / "rej.jsonl").read_text().splitlines()}
    assert reasons == {"is_deleted is NULL (policy: drop such rows)"}
    assert sources(dropped)[0]["policies"]["null_is_deleted"] == "dropped (rejected)"


def test_newer_jsonl_version_clears_the_unknown_fields(posts_sample_path, tmp_path):
    """A post a snapshot left partly NULL and a newer complete version (JSONL, sync) rewrote is
    no longer listed in kdata_post_unknown; an older version changes nothing."""
    posts = make_posts(posts_sample_path, 4)
    path = danbooru2026(posts, tmp_path / "s.parquet", uploader_id=[None] * 4, is_deleted=[None] * 4)
    db = DanbooruDB.create(tmp_path / "d.db")
    import_files(db, [path])
    conn = db.connection()
    assert unknown_fields(conn, posts[1]["id"]) == ["uploader_id", "is_deleted"]
    newer = [dict(posts[1], updated_at="2030-01-01T00:00:00.000+00:00"),
             dict(posts[2], updated_at="2001-01-01T00:00:00.000+00:00")]
    summary = import_files(db, [write_jsonl(tmp_path / "newer.jsonl", newer)])
    assert (summary.posts.updated, summary.posts.unchanged) == (1, 1)
    assert unknown_fields(conn, posts[1]["id"]) == []
    assert unknown_fields(conn, posts[2]["id"]) == ["uploader_id", "is_deleted"]
    assert conn.execute("SELECT uploader_id FROM post WHERE id = ?", (posts[1]["id"],)).fetchone() == (posts[1]["uploader_id"],)
    db.close()


def test_rows_without_file_are_imported(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 4)
    path = danbooru2026(posts, tmp_path / "s.parquet", md5=[None, posts[1]["md5"], None, None],
                        file_url=[None, posts[1]["file_url"], None, None])
    db = DanbooruDB.create(tmp_path / "d.db")
    assert import_files(db, [path]).posts.inserted == 4
    assert db.connection().execute("SELECT count(*) FROM post WHERE md5 IS NULL AND file_url IS NULL").fetchone() == (3,)


def test_duplicate_ids_newest_updated_at_wins_others_rejected(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 6)
    newer = dict(posts[2], score=77, updated_at="2025-01-01T00:00:00.000-05:00", tag_string_meta="newer_meta")
    older = dict(posts[4], score=11, updated_at="2020-01-01T00:00:00.000+09:00")
    rows = [posts[0], posts[1], posts[2], posts[3], posts[4], posts[5], newer, older]
    rejects = tmp_path / "rej.jsonl"
    for batch_size in (100, 2):  # within one batch, and across batches
        db = DanbooruDB.create(tmp_path / f"d{batch_size}.db")
        summary = import_files(db, [danbooru2026(rows, tmp_path / "dup.parquet")], batch_size=batch_size,
                               rejects_path=rejects)
        conn = db.connection()
        assert summary.rejected == 2 and summary.posts.unchanged == 0
        assert conn.execute("SELECT score FROM post WHERE id = ?", (posts[2]["id"],)).fetchone() == (77,)
        assert conn.execute("SELECT score FROM post WHERE id = ?", (posts[4]["id"],)).fetchone() == (posts[4]["score"],)
        names = [r[0] for r in conn.execute("SELECT t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
                                            "WHERE r.post_id = ?", (posts[2]["id"],))]
        assert "newer_meta" in names and "absurdres" not in names
        assert_popularity_matches_relations(conn)
        lines = [json.loads(line) for line in rejects.read_text().splitlines()]
        assert all(line["reason"].startswith("duplicate id") for line in lines)
        assert {line["record"]["id"] for line in lines} == {posts[2]["id"], posts[4]["id"]}
        db.close()


def test_inexact_float_id_and_bad_values_are_rejects(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 3)
    path = danbooru2025(posts, tmp_path / "s.parquet")
    table = pq.read_table(path)
    parent = table.column("parent_id").to_pylist()
    parent[0] = 12.5  # rows are id-descending: the last post
    table = table.set_column(table.schema.get_field_index("parent_id"), "parent_id", pa.array(parent, pa.float64()))
    rating = table.column("rating").to_pylist()
    rating[1] = "x"
    table = table.set_column(table.schema.get_field_index("rating"), "rating", pa.array(rating))
    pq.write_table(table, path)
    db = DanbooruDB.create(tmp_path / "d.db")
    summary = import_files(db, [path], rejects_path=tmp_path / "rej.jsonl")
    assert (summary.posts.inserted, summary.rejected) == (1, 2)
    lines = [json.loads(line) for line in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [(line["line"], line["reason"]) for line in lines] == [
        (1, "field 'parent_id' must be an integer, got 12.5"), (2, "unknown rating x: expected one of g, s, q, e")]


def test_timestamp_columns_keep_their_instant_and_offset(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 2)
    path = danbooru2026(posts, tmp_path / "s.parquet")
    table = pq.read_table(path)
    stamps = pa.array([1_700_000_000_123_000, None], pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("updated_at"), "updated_at", stamps)
    pq.write_table(table, path)
    db = DanbooruDB.create(tmp_path / "d.db")
    import_files(db, [path])
    got = db.connection().execute("SELECT updated_at, created_at FROM post ORDER BY id").fetchall()
    assert got[0][0] == "2023-11-14T22:13:20.123+00:00"
    assert got[1][0] == got[1][1] == posts[1]["created_at"]  # NULL updated_at: never updated since creation


def test_tags_parquet_maps_danbooru_categories(tmp_path):
    path = tmp_path / "tags.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4, 5, 6], "name": ["a", "b", "c", "d", "e", "f"],
                             "category": [0, 1, 3, 4, 5, 2], "post_count": [9, 8, 7, 6, 5, 4]}), path)
    db = DanbooruDB.create(tmp_path / "d.db")
    summary = import_files(db, [path], rejects_path=tmp_path / "rej.jsonl")
    assert (summary.tags.inserted, summary.rejected) == (5, 1)
    types = dict(db.connection().execute("SELECT name, type FROM tag"))
    assert types == {"a": 0, "b": 1, "c": 3, "d": 2, "e": 4}
    assert "category" in (tmp_path / "rej.jsonl").read_text()


# -- incremental over an existing DB -----------------------------------------------------------------
def test_snapshot_over_existing_db_updates_adds_keeps_kdata_tables_and_rerun_is_noop(posts_sample_path, tmp_path):
    old = make_posts(posts_sample_path, 30)
    db = DanbooruDB.create(tmp_path / "d.db")
    import_files(db, [write_jsonl(tmp_path / "old.jsonl", old)])
    conn = db.connection()
    conn.execute("INSERT INTO kdata_tag_alias (alias, tag_name) VALUES ('kept_alias', 'absurdres')")
    conn.commit()
    new = copy.deepcopy(old) + make_posts(posts_sample_path, 40)[30:]
    for post in new[:10]:
        post["updated_at"] = "2026-01-01T00:00:00.000+00:00"
        post["score"] += 1000
        post["tag_string_general"] = "only_this_tag"
    new[10]["updated_at"] = "2022-01-01T00:00:00.000+00:00"  # older than stored: ignored
    new[10]["score"] = -5
    summary = import_files(db, [danbooru2026(new, tmp_path / "snap.parquet")], batch_size=8)
    assert (summary.posts.inserted, summary.posts.updated, summary.posts.unchanged) == (10, 10, 20)
    assert conn.execute("SELECT score FROM post WHERE id = ?", (old[10]["id"],)).fetchone() == (old[10]["score"],)
    assert conn.execute("SELECT count(*) FROM kdata_tag_alias WHERE alias = 'kept_alias'").fetchone() == (1,)
    assert_popularity_matches_relations(conn)
    from kohaku_data.db.info import db_info
    assert db_info(db)["posts"] == 40  # summaries refreshed
    db.close()
    reference = DanbooruDB.create(tmp_path / "ref.db")
    winners = new[:10] + old[10:11] + new[11:]
    import_files(reference, [write_jsonl(tmp_path / "ref.jsonl", winners)])
    reference.close()
    assert dump(tmp_path / "d.db")["relations"] == dump(tmp_path / "ref.db")["relations"]
    assert posts_rows(tmp_path / "d.db") == posts_rows(tmp_path / "ref.db")
    before = dump(tmp_path / "d.db")
    db = DanbooruDB.open(tmp_path / "d.db")
    rerun = import_files(db, [tmp_path / "snap.parquet"])
    assert (rerun.posts.inserted, rerun.posts.updated, rerun.posts.unchanged) == (0, 0, 40)
    (row,) = [s for s in sources(db) if s["name"] == "snap.parquet"]
    assert (row["runs"], row["inserted"], row["updated"]) == (2, 10, 10)  # the first run's counts stay
    db.close()
    assert dump(tmp_path / "d.db") == before


def _source_answers(db: DanbooruDB) -> dict[str, list[int]]:
    from kohaku_data.db.query import query_ids
    return {text: query_ids(db, text) for text in ("source:https://*pixiv*", "source:*example.com/new*", "-source:*pix*")}


def _like_answers(db: DanbooruDB, monkeypatch) -> dict[str, list[int]]:
    from kohaku_data.db import source_trigrams
    with monkeypatch.context() as m:
        m.setattr(source_trigrams, "is_current", lambda db: False)  # the NOCASE index range, no trigrams
        return _source_answers(db)


def _query_bits_triggers(db: DanbooruDB) -> int:
    return db.connection().execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'kdata_query_bits_%'").fetchone()[0]


def test_bulk_import_rebuilds_the_source_trigrams_and_a_killed_one_falls_back(posts_sample_path, tmp_path,
                                                                             monkeypatch):
    """A bulk import drops the trigram and bitmap-index triggers and rebuilds both once at the
    end (replaced, new and unchanged sources all found); killed before that, source: reads the
    index range and queries the tables (right, not stale) until the next import puts the
    triggers back."""
    from kohaku_data.db import importer, source_trigrams
    from kohaku_data.db.query_bits import open_bits
    old = make_posts(posts_sample_path, 30)
    db = DanbooruDB.create(tmp_path / "d.db")
    import_files(db, [write_jsonl(tmp_path / "old.jsonl", old)], defer=True)
    assert source_trigrams.is_current(db)
    triggers = _query_bits_triggers(db)
    assert triggers and open_bits(db.connection()) is not None
    new = copy.deepcopy(old) + make_posts(posts_sample_path, 40)[30:]
    for i, post in enumerate(new[:10] + new[30:]):
        post["updated_at"] = "2026-01-01T00:00:00.000+00:00"
        post["source"] = f"https://example.com/new/{i}" if i % 2 else f"https://www.pixiv.net/artworks/{i}"
    path = danbooru2026(new, tmp_path / "snap.parquet")

    def killed(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    real = importer._import_recorded
    monkeypatch.setattr(importer, "_import_recorded", killed)
    with pytest.raises(KeyboardInterrupt):
        import_files(db, [path], defer=True)
    monkeypatch.undo()
    assert not source_trigrams.is_current(db)  # its triggers are gone: never read stale
    assert _query_bits_triggers(db) == 0 and open_bits(db.connection()) is None
    expected = _like_answers(db, monkeypatch)
    written = {r[0] for r in db.connection().execute(
        "SELECT id FROM post WHERE source LIKE 'https://example.com/new/%' AND is_deleted = 0")}
    assert len(written) == 8 and set(expected["source:*example.com/new*"]) == written
    assert _source_answers(db) == expected
    import_files(db, [path], defer=True)  # the rerun: every row unchanged, the refresh puts it back
    assert source_trigrams.is_current(db)
    assert _query_bits_triggers(db) == triggers and open_bits(db.connection()) is not None
    assert _source_answers(db) == _like_answers(db, monkeypatch) == expected
    db.connection().execute(f"INSERT INTO {source_trigrams.TABLE}({source_trigrams.TABLE}, rank) "
                            "VALUES ('integrity-check', 1)")
    db.close()


# -- tag relations by version, files by content --------------------------------------------------------
def test_implications_newest_record_wins_whatever_the_file_order(tmp_path):
    records = [  # API order: newest first; the pair was deleted, then approved again
        {"id": 20, "antecedent_name": "cat_ears", "consequent_name": "animal_ears", "status": "active",
         "updated_at": "2024-05-01T00:00:00.000-04:00"},
        {"id": 3, "antecedent_name": "cat_ears", "consequent_name": "animal_ears", "status": "deleted",
         "updated_at": "2019-05-01T00:00:00.000-04:00"},
        {"id": 5, "antecedent_name": "dog_ears", "consequent_name": "animal_ears", "status": "deleted",
         "updated_at": "2024-06-01T00:00:00.000-04:00"},
        {"id": 4, "antecedent_name": "dog_ears", "consequent_name": "animal_ears", "status": "active",
         "updated_at": "2018-06-01T00:00:00.000-04:00"},
    ]
    path = tmp_path / "implications.json"  # no tag_ prefix: recognised by content
    path.write_text(json.dumps(records))
    db = DanbooruDB.create(tmp_path / "d.db")
    summary = import_files(db, [path], batch_size=1)
    assert summary.rejected == 0 and summary.posts.inserted == 0
    pairs = db.connection().execute("SELECT antecedent, consequent FROM kdata_tag_implication").fetchall()
    assert pairs == [("cat_ears", "animal_ears")]


def test_relation_records_under_another_name_are_one_sentence(tmp_path):
    path = tmp_path / "relations.json"
    path.write_text(json.dumps([{"id": 1, "antecedent_name": "a", "consequent_name": "b", "status": "active"}]))
    db = DanbooruDB.create(tmp_path / "d.db")
    with pytest.raises(Exception, match="rename it to"):
        import_files(db, [path])


def test_unknown_parquet_shape_names_the_columns_it_needs(tmp_path):
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"post": [1], "aesthetic": [0.5]}), path)
    db = DanbooruDB.create(tmp_path / "d.db")
    with pytest.raises(UnknownInputError, match=r"needs id \(or a pandas index\), created_at, rating.*it has post, aesthetic"):
        import_files(db, [path])


def test_cli_image_is_refused_with_exit_2_and_nothing_changes(tmp_path):
    image = tmp_path / "some.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8)
    db = tmp_path / "d.db"
    assert run_kdata("db", "init", "--db", str(db)).returncode == 0
    before = dump(db)
    result = run_kdata("db", "import", str(image), "--db", str(db))
    assert result.returncode == 2
    assert "some.jpg is not a JSON/JSONL/CSV/parquet file kdata can import" in result.stderr
    assert "Traceback" not in result.stderr
    assert dump(db) == before and not (tmp_path / "d.db.rejects.jsonl").exists()


def test_cli_import_summary_and_info_show_sources(posts_sample_path, tmp_path):
    posts = make_posts(posts_sample_path, 5)
    snap = danbooru2026(posts, tmp_path / "posts-snapshot.parquet")
    aliases = tmp_path / "tag_aliases.jsonl"
    aliases.write_text(json.dumps({"id": 1, "antecedent_name": "kitty", "consequent_name": "cat", "status": "active"}) + "\n")
    db = tmp_path / "d.db"
    assert run_kdata("db", "init", "--db", str(db)).returncode == 0
    result = run_kdata("db", "import", str(snap), str(aliases), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "posts-snapshot.parquet: parquet posts (flat), 5 records" in result.stdout
    assert "posts: 5 inserted" in result.stdout and "aliases: 1 active" in result.stdout
    info = run_kdata("db", "info", "--db", str(db), "--json")
    assert info.returncode == 0, info.stderr
    listed = {s["name"]: s for s in json.loads(info.stdout)["sources"]}
    assert listed["posts-snapshot.parquet"]["size"] == snap.stat().st_size
    import hashlib
    assert listed["posts-snapshot.parquet"]["sha256"] == hashlib.sha256(snap.read_bytes()).hexdigest()
    assert listed["tag_aliases.jsonl"]["format"] == "aliases (jsonl)"
    text = run_kdata("db", "info", "--db", str(db))
    assert "source" in text.stdout and "posts-snapshot.parquet" in text.stdout


def test_cli_bad_null_deleted_choice(tmp_path):
    result = run_kdata("db", "import", str(tmp_path / "x.parquet"), "--db", str(tmp_path / "d.db"),
                       "--null-deleted", "maybe")
    assert result.returncode == 2 and "keep or drop" in result.stderr and "Traceback" not in result.stderr


def test_build_lock_and_card_name_the_db_sources(posts_sample_path, tmp_path):
    from test_build_support import build, make_inputs

    inputs = make_inputs(tmp_path / "in", n_posts=12)
    snap = danbooru2026(make_posts(posts_sample_path, 3), tmp_path / "posts-snapshot.parquet")
    with DanbooruDB.open(inputs.db) as db:
        import_files(db, [snap])
    build(inputs, tmp_path / "ds", workers=1)
    lock = json.loads((tmp_path / "ds" / "dataset.lock").read_text())
    import hashlib
    assert lock["db_sources"] == [{"name": "posts-snapshot.parquet", "size": snap.stat().st_size,
                                   "sha256": hashlib.sha256(snap.read_bytes()).hexdigest(),
                                   "format": "parquet posts (flat)"}]
    card = (tmp_path / "ds" / "README.md").read_text()
    assert "DB sources" in card and "posts-snapshot.parquet" in card
