"""The bitmap index build (db/query_bits.py `_build`) keeps its arrays narrow while it reads:
built a few ids and relations at a time, with values that need a wider type only late in the
span, it stores exactly the blobs and state of a build in one step, and each dense column in
the narrowest type of its whole int64 column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kohaku_data.db import DanbooruDB
from kohaku_data.db import query_bits
from kohaku_data.db.migrate import migrate as run_migrations
from kohaku_data.sample.metadata import write_sample_db
from test_query_dense import migrated_sample

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# tags added to the last post: more than an int8 count holds
MANY_TAGS = 300


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("bits_build") / "b.db"
    write_sample_db(path, posts=2000, seed=5)
    with sqlite3.connect(path) as conn:
        first, last = conn.execute("SELECT min(id), max(id) FROM post").fetchone()
        # small values at the start of the span, wide ones only at its end
        conn.execute("UPDATE post SET score = 1, fav_count = 2, file_size = 100, up_score = 3, "
                     "pixiv_id = NULL WHERE id < ?", (first + 300,))
        conn.execute("UPDATE post SET file_size = 5000000000, score = -100000, fav_count = 70000, "
                     "down_score = -40000, pixiv_id = 3000000000 WHERE id = ?", (last,))
        conn.execute("UPDATE post SET score = -200 WHERE id = ?", (last - 500,))
        have = {r[0] for r in conn.execute("SELECT tag_id FROM posttagrelation WHERE post_id = ?", (last,))}
        extra = [t for (t,) in conn.execute("SELECT id FROM tag WHERE type = 0 ORDER BY id") if t not in have]
        conn.executemany("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)",
                         [(last, t) for t in extra[:MANY_TAGS]])
    handle = DanbooruDB.open(path)
    run_migrations(handle, MIGRATIONS)
    yield handle
    handle.close()


def _build(db: DanbooruDB) -> tuple[dict[str, bytes], dict[str, int]]:
    conn = db.connection()
    with db.database.atomic():
        query_bits._build(conn)
    blobs = dict(conn.execute(f"SELECT name, data FROM {query_bits.BITS_TABLE}").fetchall())
    state = dict(conn.execute(f"SELECT key, value FROM {query_bits.STATE_TABLE} WHERE key != 'generation'"))
    return blobs, state


def _one_step(monkeypatch) -> None:
    for name in ("_BUILD_CHUNK", "_COUNT_CHUNK", "_TAG_CHUNK"):
        monkeypatch.setattr(query_bits, name, 1 << 40)


def _small_steps(monkeypatch) -> None:
    monkeypatch.setattr(query_bits, "_BUILD_CHUNK", 64)
    monkeypatch.setattr(query_bits, "_COUNT_CHUNK", MANY_TAGS + 50)  # the last post spans chunks
    monkeypatch.setattr(query_bits, "_TAG_CHUNK", 100)


def test_small_steps_store_what_one_step_stores(db, monkeypatch) -> None:
    with monkeypatch.context() as m:
        _one_step(m)
        whole = _build(db)
    with monkeypatch.context() as m:
        _small_steps(m)
        steps = _build(db)
    assert steps == whole
    state = whole[1]
    # widened late in the span: from int8 (zeros) to the type the last post needs
    assert (state["itemsize:filesize"], state["itemsize:score"], state["itemsize:favcount"]) == (8, 4, 4)
    assert (state["itemsize:pixiv_id"], state["itemsize:downvotes"], state["itemsize:tagcount"]) == (8, 4, 2)
    assert state["itemsize:gentags"] == 2 and state["itemsize:rating"] == 1


def test_columns_are_their_int64_column_narrowed(db, monkeypatch) -> None:
    """What the build stored before it kept columns narrow: the whole int64 column over the
    span (0 where no post), narrowed once to the narrowest type that holds it."""
    _small_steps(monkeypatch)
    blobs, state = _build(db)
    conn = db.connection()
    base, span = state["base"], state["span"]
    sql = {**query_bits.DENSE_POST, "tagcount": "(SELECT count(*) FROM posttagrelation r WHERE r.post_id = post.id)",
           "gentags": "(SELECT count(*) FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
                      "WHERE r.post_id = post.id AND t.type = 0)"}
    for name, expr in sql.items():
        dense = np.zeros(span, dtype=np.int64)
        rows = np.array(conn.execute(f"SELECT id, coalesce({expr}, 0) FROM post").fetchall(), dtype=np.int64)
        dense[rows[:, 0] - base] = rows[:, 1]
        dtype = next(t for t in query_bits._NARROW
                     if np.iinfo(t).min <= dense.min() and dense.max() <= np.iinfo(t).max)
        assert blobs[f"col:{name}"] == dense.astype(dtype).tobytes(), name
        assert state[f"itemsize:{name}"] == np.dtype(dtype).itemsize, name


def test_a_late_date_of_another_shape_drops_the_column(tmp_path: Path, monkeypatch) -> None:
    handle = migrated_sample(tmp_path / "late.db", 300, 2, "UPDATE post SET created_at = '2020-01-01 10:00:00' "
                             "WHERE id = (SELECT max(id) FROM post)")
    _small_steps(monkeypatch)
    blobs, _ = _build(handle)
    assert "col:date" not in blobs and "col:filesize" in blobs
    handle.close()


@pytest.mark.parametrize("steps", [_one_step, _small_steps])
def test_relations_of_ids_outside_the_span_are_left_out(tmp_path: Path, monkeypatch, steps) -> None:
    """Orphan relations (posts that do not exist) before the first post and past the last one,
    of a tag with a bitmap: the build neither fails nor sets a bit for them."""
    top = "(SELECT tag_id FROM posttagrelation GROUP BY tag_id ORDER BY count(*) DESC LIMIT 1)"
    handle = migrated_sample(tmp_path / "orphans.db", 500, 1,
                             f"INSERT INTO posttagrelation (post_id, tag_id) SELECT max(id) + 7, {top} FROM post",
                             f"INSERT INTO posttagrelation (post_id, tag_id) SELECT min(id) - 3, {top} FROM post")
    steps(monkeypatch)
    blobs, state = _build(handle)
    conn = handle.connection()
    (tag_id,) = conn.execute(f"SELECT {top}").fetchone()
    with_tag = [r[0] for r in conn.execute("SELECT post_id FROM posttagrelation r JOIN post p ON p.id = r.post_id "
                                           "WHERE tag_id = ?", (tag_id,))]
    expected = np.zeros(state["span"], dtype=bool)
    expected[np.array(with_tag) - state["base"]] = True
    assert blobs[f"tag:{tag_id}"] == np.packbits(expected).tobytes()
    handle.close()
