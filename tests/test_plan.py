"""The columnar build plan on a real sample DB and real files: what joins, what is refused, and
the items tasks get from column slices."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace

import pytest

from kohaku_data.assembly.plan import PLAN_SCHEMA, make_plan
from kohaku_data.db import DanbooruDB
from kohaku_data.sources import open_source
from test_build_support import ORPHAN_KEY, make_inputs, small_recipe


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("plan"))


def _plan(inputs, **recipe):
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        return make_plan(db, open_source(inputs.src), small_recipe(**recipe))


def test_plan_joins_files_with_posts_and_carries_the_db_md5(inputs):
    plan = _plan(inputs)
    assert dict(plan.frame.schema) == PLAN_SCHEMA
    keys = plan.frame["key"].to_list()
    assert keys == sorted(keys) and ORPHAN_KEY not in keys and inputs.hard["no_file"] not in keys
    with sqlite3.connect(inputs.db) as conn:
        db = {pid: (md5, size) for pid, md5, size in conn.execute("SELECT id, md5, file_size FROM post")}
    conn.close()
    items = plan.items
    assert [i.key for i in items] == keys
    assert all((item.md5, item.file_size) == db[item.key] for item in items)
    assert items[[i.key for i in items].index(inputs.hard["corrupt"])].md5 is None  # NULL md5 stays None
    assert [(r["key"], r["reason"]) for r in plan.rejects if r["reason"] == "file_without_post"] == [
        (ORPHAN_KEY, "file_without_post")]


def test_query_keeps_selected_posts_and_reports_posts_without_file(inputs):
    with sqlite3.connect(inputs.db) as conn:
        rating = conn.execute("SELECT rating FROM post WHERE id = ?", (inputs.hard["no_file"],)).fetchone()[0]
        wanted = [pid for (pid,) in conn.execute(
            "SELECT id FROM post WHERE rating = ? AND is_deleted IS NOT 1 ORDER BY id", (rating,))]
    conn.close()
    letter = {0: "g", 1: "s", 2: "q", 3: "e"}.get(rating, rating)
    plan = _plan(inputs, query=f"rating:{letter}")
    assert plan.frame["key"].to_list() == [k for k in wanted if k != inputs.hard["no_file"]]
    assert [r["key"] for r in plan.rejects if r["reason"] == "post_without_file"] == [inputs.hard["no_file"]]


def test_without_a_query_deleted_posts_are_left_out_as_kdata_query_does(inputs, tmp_path):
    db = tmp_path / "deleted.db"
    shutil.copy(inputs.db, db)
    with sqlite3.connect(db) as conn:
        ids = [pid for (pid,) in conn.execute("SELECT id FROM post WHERE is_deleted IS NOT 1 ORDER BY id")]
        gone = [k for k in _plan(inputs).frame["key"].to_list() if k in ids][:2]
        conn.execute(f"UPDATE post SET is_deleted = 1 WHERE id IN ({gone[0]}, {gone[1]})")
    conn.close()
    copy = replace(inputs, db=db)
    plan = _plan(copy)
    assert not set(gone) & set(plan.frame["key"].to_list())
    assert not any(r["key"] in gone for r in plan.rejects)  # not selected, as a query's leftovers
    assert set(gone) <= set(_plan(copy, query="status:any").frame["key"].to_list())


def test_task_slices_cover_the_plan_once_and_resume_after_a_key(inputs):
    plan = _plan(inputs)
    items = plan.items
    chunks = list(plan.chunks(7))
    assert [i for chunk in chunks for i in chunk] == list(items) and all(len(c) <= 7 for c in chunks)
    assert items[2:5] == plan.slice(2, 5) and items[-1] == items[len(items) - 1]
    middle = items[10].key
    start = plan.position_after(middle)
    assert items[start].key > middle and items[start - 1].key == middle
    assert plan.position_after(-1) == 0 and plan.position_after(items[-1].key) == len(plan)
    assert plan.nbytes() < 200 * len(plan) + 10_000
