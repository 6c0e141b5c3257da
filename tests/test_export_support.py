"""Shared by the shard-schema and export tests: a real build whose first samples lack tags and quality.

🤗 `datasets` infers a webdataset's types from its first five samples, so the hard case is a
build whose first samples have empty artist/character/copyright/meta lists and no quality tag,
and whose later samples have them: `make_sparse_inputs` strips the first posts' non-general tags
and dates them after the recipe's `quality_cutoff_date` (no quality tag for them).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kohaku_data.config import Recipe
from test_build_support import Inputs, build, make_inputs, small_recipe

SPARSE_FIRST = 7  # more than the five samples 🤗 looks at
CUTOFF = "2029-01-01"


def sparse_recipe(**kw) -> Recipe:
    return small_recipe(caption={"quality_cutoff_date": CUTOFF}, **kw)


def make_sparse_inputs(root: Path, n_posts: int = 24) -> Inputs:
    inputs = make_inputs(root, n_posts=n_posts)
    with sqlite3.connect(inputs.db) as conn:
        live = {pid for (pid,) in conn.execute("SELECT id FROM post WHERE is_deleted IS NOT 1")}
        # The first samples of the build: live posts (a deleted one is not selected) with a good file.
        first = [i for i in inputs.ids if i not in inputs.hard.values() and i in live][:SPARSE_FIRST]
        marks = ",".join("?" * len(first))
        conn.execute(f"DELETE FROM posttagrelation WHERE post_id IN ({marks}) "
                     "AND tag_id IN (SELECT id FROM tag WHERE type != 0)", first)
        conn.execute(f"UPDATE post SET created_at = '2030-06-01T00:00:00.000-04:00' WHERE id IN ({marks})", first)
    conn.close()
    return inputs


def sparse_build(root: Path) -> tuple[Inputs, Path]:
    inputs = make_sparse_inputs(root / "inputs")
    out = root / "ds"
    build(inputs, out, sparse_recipe())
    return inputs, out
