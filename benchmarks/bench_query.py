"""Benchmark: Danbooru-style tag queries on a sample DB (issue 2).

    .venv/bin/python benchmarks/bench_query.py [--quick] [--posts N]

Builds (once, cached under benchmarks/.cache/) a sample DB with `write_sample_db` (real tag names
and popularity) plus a migrated copy, then times
`1girl solo -comic rating:g,s score:>10` and a few other queries three ways, in the same run:

- baseline: the naive SQL (`select_posts`: `id IN (SELECT post_id ...)` per tag) on the file as
  published (no migrations, so none of 0003's indexes),
- sql: the same SQL on the migrated copy,
- arrays unmigrated: `query_ids` on the file as published,
- fast: `query_ids` on the migrated copy (sorted id arrays intersected with numpy).
All engines must return the same ids (checked).

Results go to benchmarks/results/query.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_results  # noqa: E402

from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.db.migrate import migrate  # noqa: E402
from kohaku_data.db.query import count_posts, query_ids, select_posts  # noqa: E402
from kohaku_data.sample.metadata import write_sample_db  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
TARGET = "1girl solo -comic rating:g,s score:>10"
OTHER_QUERIES = [
    "1girl solo -comic rating:g,s score:>10 order:score",
    "highres ~cat_ears ~dog_ears -1boy width:>=1024",
    "hatsune_miku year:2020..2022",
    "long_hair blue_eyes school_uniform",
]
REPEATS = 5


# -- sample DB ---------------------------------------------------------------------------------
def sample_dbs(posts: int, seed: int = 0) -> tuple[Path, Path]:
    """(as published, migrated) copies of the shared sample DB, cached under benchmarks/.cache/."""
    CACHE.mkdir(parents=True, exist_ok=True)
    plain = CACHE / f"query-{posts}-seed{seed}.db"
    migrated = CACHE / f"query-{posts}-seed{seed}-migrated.db"
    if not plain.exists():
        t0 = time.perf_counter()
        write_sample_db(plain, posts=posts, seed=seed)
        print(f"wrote {plain} in {time.perf_counter() - t0:.1f} s")
    if not migrated.exists():
        tmp = migrated.with_suffix(".tmp")
        shutil.copyfile(plain, tmp)
        os.replace(tmp, migrated)
    with DanbooruDB.open(migrated) as db:
        t0 = time.perf_counter()
        applied = migrate(db)
        if applied:
            print(f"applied {', '.join(applied)} in {time.perf_counter() - t0:.1f} s")
    return plain, migrated


# -- timing ------------------------------------------------------------------------------------
PAGE = 100


def timed(fn) -> tuple[float, object]:
    """Median seconds over REPEATS runs after one warm-up run (page cache warm for all engines)."""
    result = fn()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def sql_ids(db: DanbooruDB, text: str) -> list[int]:
    return [r[0] for r in select_posts(db, text).select(db.Post.id).tuples()]


def bench(posts: int) -> dict:
    plain_path, migrated_path = sample_dbs(posts)
    rows = []
    with DanbooruDB.open(plain_path, readonly=True) as plain, \
            DanbooruDB.open(migrated_path, readonly=True) as migrated:
        for text in [TARGET, *OTHER_QUERIES]:
            base_s, base_ids = timed(lambda: sql_ids(plain, text))
            sql_s, sql_res = timed(lambda: sql_ids(migrated, text))
            unmig_s, unmig_res = timed(lambda: query_ids(plain, text))
            fast_s, fast_ids = timed(lambda: query_ids(migrated, text))
            assert fast_ids == base_ids == sql_res == unmig_res, f"engines disagree on {text!r}"
            count_s, n = timed(lambda: count_posts(migrated, text))
            assert n == len(fast_ids)
            # A page of 100 from the middle (what `kdata serve` and the build plan ask for),
            # beside the same page cut from the full result list.
            mid = len(fast_ids) // 2
            cursor = fast_ids[mid] if fast_ids else None
            page_s, page = timed(lambda: query_ids(migrated, text, limit=PAGE, after_id=cursor))
            assert page == fast_ids[mid + 1:mid + 1 + PAGE], f"page disagrees on {text!r}"
            row = {
                "query": text, "matches": n, "baseline_sql_unmigrated_s": base_s,
                "sql_migrated_s": sql_s, "arrays_unmigrated_s": unmig_s, "fast_s": fast_s,
                "count_s": count_s, "speedup_vs_baseline": base_s / fast_s, "page_s": page_s,
            }
            rows.append(row)
            print(f"{text!r}: {n:,} matches | fast {fast_s * 1000:7.1f} ms | baseline (SQL, "
                  f"published indexes) {base_s * 1000:7.1f} ms | x{base_s / fast_s:5.1f} | "
                  f"SQL migrated {sql_s * 1000:7.1f} ms | arrays unmigrated {unmig_s * 1000:7.1f} ms | "
                  f"page of {PAGE} {page_s * 1000:6.1f} ms (x{fast_s / page_s:.0f} vs the full list)")
    return {"posts": posts, "repeats": REPEATS, "target": TARGET, "target_limit_s": 0.3,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k posts instead of 1M")
    parser.add_argument("--posts", type=int, default=None)
    args = parser.parse_args()
    posts = args.posts or (100_000 if args.quick else 1_000_000)
    result = bench(posts)
    target = result["rows"][0]
    verdict = "OK" if target["fast_s"] < 0.3 else "SLOW"
    print(f"target {TARGET!r} on {posts:,} posts: {target['fast_s'] * 1000:.1f} ms "
          f"(limit 300 ms: {verdict}), baseline {target['baseline_sql_unmigrated_s'] * 1000:.1f} ms, "
          f"x{target['speedup_vs_baseline']:.1f}")
    write_results("query", result)


if __name__ == "__main__":
    main()
