"""Benchmark: Danbooru-style tag queries on a sample DB (issue 2).

    .venv/bin/python benchmarks/bench_query.py [--quick] [--posts N]

Builds (once, cached under benchmarks/.cache/) a sample DB with realistic tag popularity, then times
`1girl solo -comic rating:g,s score:>10` and a few other queries three ways, in the same run:

- baseline: the naive SQL (`id IN (SELECT post_id ...)` per tag) on the file *before* migration 0003
  (the published indexes only),
- sql: the same SQL (`select_posts`) after migration 0003,
- fast: `query_ids` after migration 0003 (sorted id arrays intersected with numpy).

Results go to benchmarks/results/query.json.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.db.enums import TagType  # noqa: E402
from kohaku_data.db.handle import published_schema_sql  # noqa: E402
from kohaku_data.db.query import count_posts, query_ids, select_posts  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
TARGET = "1girl solo -comic rating:g,s score:>10"
OTHER_QUERIES = [
    "1girl solo -comic rating:g,s score:>10 order:score",
    "highres ~cat_ears ~dog_ears -1boy width:>=1024",
    "hatsune_miku year:2020..2022",
    "long_hair blue_eyes school_uniform",
]
REPEATS = 5


# -- sample DB ---------------------------------------------------------------------------------
def build_sample(path: Path, posts: int, seed: int = 0) -> None:
    """The shared sample writer when it exists, else the private generator below."""
    if importlib.util.find_spec("kohaku_data.sample.metadata") is not None:
        from kohaku_data.sample.metadata import write_sample_db

        write_sample_db(path, posts=posts, seed=seed)
        return
    _private_sample(path, posts, seed)


def _private_sample(path: Path, posts: int, seed: int) -> None:
    """Posts with tags drawn independently at their real Danbooru frequency (top 20k tags)."""
    rng = np.random.default_rng(seed)
    tags = _read_tags()
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.executescript(published_schema_sql())
    conn.executescript("DROP INDEX posttagrelation_post_id; DROP INDEX posttagrelation_tag_id;")
    conn.execute("PRAGMA journal_mode=off")
    conn.execute("PRAGMA synchronous=off")
    ids = np.sort(rng.choice(8_000_000, posts, replace=False)) + 1
    conn.executemany("INSERT INTO post VALUES (" + ",".join("?" * 27) + ")", _post_rows(ids, rng))
    rel_post, rel_tag, popularity = _relations(ids, len(tags), rng)
    conn.executemany(
        "INSERT INTO tag VALUES (?,?,?,?)",
        ((i + 1, name, int(kind), int(popularity[i])) for i, (name, kind) in enumerate(tags)),
    )
    conn.executemany(
        "INSERT INTO posttagrelation (post_id, tag_id) VALUES (?,?)",
        zip(rel_post.tolist(), rel_tag.tolist()),
    )
    conn.executescript(
        'CREATE INDEX "posttagrelation_post_id" ON "posttagrelation" ("post_id");'
        'CREATE INDEX "posttagrelation_tag_id" ON "posttagrelation" ("tag_id");'
    )
    conn.commit()
    conn.close()
    os.replace(tmp, path)


def _read_tags() -> list[tuple[str, TagType]]:
    csv_path = ROOT / "kohaku_data" / "resources" / "danbooru-tags-top20k.csv"
    with csv_path.open(newline="") as fh:
        rows = [(r[0], TagType.from_danbooru_category(int(r[1])), int(r[2])) for r in csv.reader(fh)]
    _read_tags.counts = np.array([c for _, _, c in rows], dtype=np.float64)  # type: ignore[attr-defined]
    return [(name, kind) for name, kind, _ in rows]


def _relations(ids: np.ndarray, n_tags: int, rng: np.random.Generator):
    # ~10M Danbooru posts carry these counts: p(1girl) ~ 0.6, p(solo) ~ 0.5, ~28 tags/post.
    prob = np.minimum(_read_tags.counts / 10_000_000, 0.95)  # type: ignore[attr-defined]
    posts_of, tags_of = [], []
    for t in range(n_tags):
        if prob[t] > 0.02:
            idx = np.flatnonzero(rng.random(len(ids)) < prob[t])
        else:
            idx = np.unique(rng.integers(0, len(ids), rng.binomial(len(ids), prob[t])))
        posts_of.append(idx)
        tags_of.append(np.full(len(idx), t + 1, dtype=np.int64))
    post_idx = np.concatenate(posts_of)
    tag = np.concatenate(tags_of)
    order = np.lexsort((tag, post_idx))  # rows grouped by post, like an import
    popularity = np.bincount(tag - 1, minlength=n_tags)
    return ids[post_idx[order]], tag[order], popularity


def _post_rows(ids: np.ndarray, rng: np.random.Generator):
    n = len(ids)
    start, end = 1_117_584_000, 1_704_067_200  # 2005-06-01 .. 2024-01-01, growing with id
    stamps = start + (ids / ids.max()) * (end - start) + rng.integers(0, 86_400, n)
    rating = rng.choice(4, n, p=[0.35, 0.35, 0.17, 0.13])
    score = np.floor(rng.exponential(14, n)).astype(int) - rng.integers(0, 3, n)
    width = rng.choice([600, 800, 1000, 1200, 1500, 2000, 2480, 3000, 4000], n)
    height = (width * rng.choice([0.5, 0.75, 1.0, 1.33, 1.41, 1.5, 1.78], n)).astype(int)
    ext = rng.choice(["jpg", "png", "gif", "webp", "mp4"], n, p=[0.7, 0.25, 0.02, 0.01, 0.02])
    for i in range(n):
        pid = int(ids[i])
        md5 = f"{rng.integers(1 << 62):032x}"
        url = f"https://cdn.donmai.us/original/{md5[:2]}/{md5[2:4]}/{md5}.{ext[i]}"
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000-05:00", time.gmtime(int(stamps[i])))
        yield (
            pid, created, int(rng.integers(1, 900_000)), f"https://www.pixiv.net/artworks/{pid}",
            md5, None, 0, 0, 0, None, 0, 0, 1, 0, int(width[i]), int(height[i]),
            int(width[i]) * int(height[i]) // 3, str(ext[i]), int(rating[i]), int(score[i]),
            max(int(score[i]), 0), 0, max(int(score[i]) * 2, 0), url,
            url.replace("original", "sample"), url.replace("original", "preview"), created,
        )
