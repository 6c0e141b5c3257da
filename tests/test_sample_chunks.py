"""`kdata sample` at any size: chunk by chunk generation, the long tail, determinism per seed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from kohaku_data.db import TagType
from kohaku_data.sample import metadata, write_sample_db
from kohaku_data.sample.tail import TAIL_FROM_POSTS, default_tail_tags


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 64 posts, so a small sample crosses many chunk boundaries."""
    monkeypatch.setattr(metadata, "CHUNK_POSTS", 64)
    return 64


def _posts(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, created_at, parent_id, has_children FROM post ORDER BY id").fetchall()


def test_many_chunks_are_deterministic_and_consistent_across_boundaries(tmp_path: Path, small_chunks: int) -> None:
    write_sample_db(tmp_path / "a.db", 1000, seed=7, tail_tags=300)
    write_sample_db(tmp_path / "b.db", 1000, seed=7, tail_tags=300)
    write_sample_db(tmp_path / "c.db", 1000, seed=8, tail_tags=300)
    with sqlite3.connect(tmp_path / "a.db") as a, sqlite3.connect(tmp_path / "b.db") as b:
        for table in ("post", "tag", "posttagrelation"):
            sql = f'SELECT * FROM "{table}" ORDER BY id'
            assert a.execute(sql).fetchall() == b.execute(sql).fetchall(), table
    assert _posts(tmp_path / "a.db") != _posts(tmp_path / "c.db")
    rows = _posts(tmp_path / "a.db")
    ids = [r[0] for r in rows]
    position = {pid: i for i, pid in enumerate(ids)}
    assert len(rows) == 1000 and ids == sorted(set(ids))
    # Creation times follow ids over the whole sample, not only within a chunk.
    utc = [np.datetime64(c[:23]) - np.timedelta64(int(c[23:26]), "h") for _, c, _, _ in rows]
    assert all(x <= y for x, y in zip(utc, utc[1:]))
    parents = {r[2] for r in rows if r[2] is not None}
    assert parents and all(0 < position[r[0]] - position[r[2]] <= 30 for r in rows if r[2] is not None)
    # A parent in the chunk before its child's still knows it has children.
    assert {r[0] for r in rows if r[3]} == parents
    assert any(position[c[2]] // small_chunks != position[c[0]] // small_chunks for c in rows if c[2] is not None)


def test_created_at_does_not_depend_on_the_chunk_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sample_db(tmp_path / "big.db", 500, seed=2)
    monkeypatch.setattr(metadata, "CHUNK_POSTS", 50)
    write_sample_db(tmp_path / "small.db", 500, seed=2)
    big, small = _posts(tmp_path / "big.db"), _posts(tmp_path / "small.db")
    assert [r[1] for r in big] == [r[1] for r in small]


def test_long_tail_tags_are_unique_and_on_a_handful_of_posts(tmp_path: Path, small_chunks: int) -> None:
    path = tmp_path / "tail.db"
    write_sample_db(path, 2000, seed=3, tail_tags=1500)
    with sqlite3.connect(path) as conn:
        tail = conn.execute("SELECT name, type, popularity FROM tag WHERE id > 20000").fetchall()
        real = conn.execute("SELECT count(*) FROM tag WHERE id <= 20000").fetchone()[0]
        wrong = conn.execute(
            'SELECT count(*) FROM "tag" t WHERE popularity != '
            '(SELECT count(*) FROM "posttagrelation" r WHERE r.tag_id = t.id)').fetchone()[0]
    names = [t[0] for t in tail]
    pops = np.array([t[2] for t in tail])
    assert len(tail) == 1500 and len(set(names)) == len(names) and wrong == 0 and real > 1000
    assert (pops >= 1).all() and np.median(pops) <= 2 and (pops <= 5).mean() > 0.8
    assert {t[1] for t in tail} == {TagType.ARTIST, TagType.GENERAL, TagType.CHARACTER, TagType.COPYRIGHT}


def test_tail_size_rule() -> None:
    assert default_tail_tags(TAIL_FROM_POSTS - 1) == 0
    assert default_tail_tags(7_800_000) == 975_000  # ~1M tag names with the 20k real ones


def test_generate_matches_the_written_file(tmp_path: Path, small_chunks: int) -> None:
    sample = metadata.generate(5, 300, tail_tags=50)
    write_sample_db(tmp_path / "x.db", 300, seed=5, tail_tags=50)
    with sqlite3.connect(tmp_path / "x.db") as conn:
        rel = np.array(conn.execute("SELECT post_id, tag_id FROM posttagrelation ORDER BY id").fetchall())
        post_ids = [r[0] for r in conn.execute("SELECT id FROM post ORDER BY id")]
    assert (rel[:, 0] == sample.rel_post).all() and (rel[:, 1] == sample.rel_tag).all()
    assert post_ids == sample.posts["id"]


def test_a_failing_chunk_stops_the_writer_and_leaves_nothing(tmp_path: Path, small_chunks: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks are made in a thread ahead of the writer: its error is the caller's, the thread
    ends, and no file (temporary or final) is left."""
    import threading

    made = metadata._chunk

    def chunk(plan, j, carry):
        if j == 5:
            raise RuntimeError("chunk 5 broke")
        return made(plan, j, carry)

    monkeypatch.setattr(metadata, "_chunk", chunk)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="chunk 5 broke"):
        write_sample_db(tmp_path / "x.db", 1000, seed=1)
    assert threading.active_count() == before
    assert list(tmp_path.iterdir()) == []


def test_rows_are_the_same_whatever_the_statement_size(tmp_path: Path, small_chunks: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Many rows a statement or one: the same rows, ids and bytes."""
    write_sample_db(tmp_path / "many.db", 700, seed=4, tail_tags=80)
    monkeypatch.setattr(metadata, "_ROWS_PER_INSERT", 1)
    write_sample_db(tmp_path / "one.db", 700, seed=4, tail_tags=80)
    assert (tmp_path / "many.db").read_bytes() == (tmp_path / "one.db").read_bytes()
