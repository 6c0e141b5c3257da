"""Benchmark: Danbooru-style tag queries on a sample DB (issues 2, 10, 13).

    .venv/bin/python benchmarks/bench_query.py [--quick] [--posts N] [--plain DB --migrated DB]

Builds (once, cached under benchmarks/.cache/) a sample DB with `write_sample_db` (real tag names
and popularity) plus a migrated copy, or takes a given pair (the file as published and a migrated
copy of it). Every figure stands beside its plain-SQL baseline from the same run:

- whole results: `query_ids` on the migrated copy (bitmap index of migration 0009 for big
  queries, sorted id arrays for the rest) against `select_posts` (the plain SQL: `id IN (SELECT
  post_id ...)` per tag, joined by the query's and/or/not) on the file as published, for the
  classic recipe query and the new syntax (or-groups, parentheses, wildcards, value lists,
  negated metatags and groups); also SQL on the migrated copy and arrays without the bitmaps;
- counts: `count_posts` against `SELECT COUNT(*)` of the plain SQL (published file);
- pages: `order:score` / `order:favcount` pages of 20 (what `/posts?q=...&limit=20` asks for;
  the walk of the order's index) against the plain SQL with `ORDER BY ... LIMIT 21` on the
  migrated copy (SQLite's own best plan, the score index there) and against the full-result
  plan (every match sorted) in the same process;
- whole process: `kdata query TARGET --count` as a user runs it, beside `python -c pass` and
  `python -c "import kohaku_data.cli"` (the fixed cost every command pays).
All engines must return the same ids (checked). Results go to benchmarks/results/query.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_results  # noqa: E402

from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.db import query as query_mod  # noqa: E402
from kohaku_data.db.migrate import migrate  # noqa: E402
from kohaku_data.db.query import count_posts, query_ids, select_posts  # noqa: E402
from kohaku_data.db.query_bits import refresh_if_stale  # noqa: E402
from kohaku_data.sample.metadata import write_sample_db  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
MIGRATIONS = ROOT / "migrations"
TARGET = "1girl solo -comic rating:g,s score:>10"
QUERIES = [
    TARGET,
    "highres ~cat_ears ~dog_ears -1boy width:>=1024",
    "hatsune_miku year:2020..2022",
    "long_hair blue_eyes school_uniform",
    # issue 13's syntax
    "(cat_ears or dog_ears) *_hair -1boy",
    "hatsune_miku* rating:g,s -score:<0",
    "(1girl solo) or (1boy -1girl) -rating:e score:1,5,10,20..30",
    "long_hair -(smile or open_mouth) favcount:>=5",
]
PAGES = ["long_hair order:score", "1girl solo -comic order:favcount", "*_hair rating:g order:score"]
# Issue 20: the metatags added with Danbooru's full set, counted (and one paged in id order)
METATAG_COUNTS = ["filesize:>1mb", "upvotes:>5", "has:source", "pixiv_id:>50000000", "is:parent",
                  "parent:any", "age:<10y", "is:sfw is:png", "source:https://*pixiv*",
                  "1girl filesize:>1mb -has:source", "date:2020-01-01..2021-12-31 rating:g"]
METATAG_PAGES = ["gentags:<10 1girl", "is:parent solo", "source:https://*pixiv* long_hair"]
PAGE = 20
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
    return plain, migrated


def ensure_migrated(path: Path) -> None:
    with DanbooruDB.open(path) as db:
        t0 = time.perf_counter()
        applied = migrate(db, MIGRATIONS)
        if applied:
            print(f"applied {', '.join(applied)} in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        if refresh_if_stale(db):  # a file migrated by an older layout of the bitmap index
            print(f"rebuilt the bitmap index in {time.perf_counter() - t0:.1f} s")


# -- timing ------------------------------------------------------------------------------------
def timed(fn, repeats: int | None = None) -> tuple[float, object]:
    """Median seconds over `repeats` runs after one warm-up run (page cache warm for all)."""
    repeats = min(repeats or REPEATS, REPEATS)
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def sql_ids(db: DanbooruDB, text: str, limit: int | None = None) -> list[int]:
    select = select_posts(db, text).select(db.Post.id)
    if limit is not None:
        select = select.limit(limit)
    return [r[0] for r in select.tuples()]


def sql_count(db: DanbooruDB, text: str) -> int:
    return select_posts(db, text).order_by().count()


def without(name: str, value, fn):
    """Run `fn` with query_mod.<name> replaced (the other plan of the same engine)."""
    def run():
        saved = getattr(query_mod, name)
        setattr(query_mod, name, value)
        try:
            return fn()
        finally:
            setattr(query_mod, name, saved)
    return run


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


# -- the three parts -------------------------------------------------------------------------------
def bench_results(plain: DanbooruDB, migrated: DanbooruDB, queries: list[str]) -> list[dict]:
    rows = []
    for text in queries:
        base_s, base_ids = timed(lambda: sql_ids(plain, text), repeats=3)
        sql_s, sql_res = timed(lambda: sql_ids(migrated, text), repeats=3)
        fast_s, fast_ids = timed(lambda: query_ids(migrated, text))
        arrays_s, arrays_ids = timed(without("_bits_for", lambda conn, plan: None,
                                             lambda: query_ids(migrated, text)))
        assert fast_ids == base_ids == sql_res == arrays_ids, f"engines disagree on {text!r}"
        count_s, n = timed(lambda: count_posts(migrated, text))
        base_count_s, base_n = timed(lambda: sql_count(plain, text), repeats=3)
        assert n == base_n == len(fast_ids), f"counts disagree on {text!r}"
        rows.append({
            "query": text, "matches": n, "baseline_sql_unmigrated_s": base_s,
            "sql_migrated_s": sql_s, "arrays_no_bitmaps_s": arrays_s, "fast_s": fast_s,
            "speedup_vs_baseline": base_s / fast_s, "count_s": count_s,
            "baseline_sql_count_s": base_count_s, "count_speedup": base_count_s / count_s,
        })
        print(f"{text!r}: {n:,} matches | ids {ms(fast_s)} (arrays w/o bitmaps {ms(arrays_s)}) "
              f"vs plain SQL {ms(base_s)} x{base_s / fast_s:6.1f} (SQL migrated {ms(sql_s)}) | "
              f"count {ms(count_s)} vs SQL COUNT {ms(base_count_s)} x{base_count_s / count_s:6.1f}")
    return rows


def bench_pages(migrated: DanbooruDB) -> list[dict]:
    rows = []
    for text in PAGES:
        walk_s, walk = timed(lambda: query_ids(migrated, text, limit=PAGE + 1))
        full_s, full = timed(without("_walkable", lambda *a: False,
                                     lambda: query_ids(migrated, text, limit=PAGE + 1)))
        sql_s, sql = timed(lambda: sql_ids(migrated, text, limit=PAGE + 1), repeats=3)
        cursor = walk[PAGE - 1]
        next_s, nxt = timed(lambda: query_ids(migrated, text, limit=PAGE + 1, after_id=cursor))
        assert walk == full == sql, f"pages disagree on {text!r}"
        assert nxt == query_ids(migrated, text)[PAGE:2 * PAGE + 1], f"page 2 disagrees on {text!r}"
        rows.append({"query": text, "limit": PAGE + 1, "page_s": walk_s, "next_page_s": next_s,
                     "full_plan_s": full_s, "baseline_sql_limit_s": sql_s,
                     "speedup_vs_sql": sql_s / walk_s, "speedup_vs_full": full_s / walk_s})
        print(f"{text!r} page of {PAGE}: {ms(walk_s)} (next page {ms(next_s)}) vs plain SQL "
              f"ORDER BY/LIMIT {ms(sql_s)} x{sql_s / walk_s:7.1f} | full plan (sort every match) "
              f"{ms(full_s)} x{full_s / walk_s:6.1f}")
    return rows


def sql_count_raw(db: DanbooruDB, text: str) -> int:
    """Plain SQL COUNT(*) with the query's WHERE on `post` (no peewee alias: the tag-count
    metatags' correlated subqueries name `post`)."""
    where, params = query_mod.tree_sql(query_mod.make_plan(db, text).tree)
    return db.connection().execute(f"SELECT count(*) FROM post WHERE {where}", params).fetchone()[0]


def sql_page_raw(db: DanbooruDB, text: str, limit: int) -> list[int]:
    where, params = query_mod.tree_sql(query_mod.make_plan(db, text).tree)
    return [r[0] for r in db.connection().execute(
        f"SELECT id FROM post WHERE {where} ORDER BY id LIMIT ?", [*params, limit])]


def bench_metatags(plain: DanbooruDB, migrated: DanbooruDB) -> list[dict]:
    """Issue 20: counts of the new metatags on the migrated copy against the plain SQL COUNT
    on the published file and on the migrated copy (its indexes), and the engine without the
    bitmap index (what these counts cost before layout 4: SQL with a row read per post for the
    hidden-deleted check); pages of 20 in id order against SQL's LIMIT."""
    rows = []
    no_bits = lambda fn: without("open_bits", lambda conn: None, without("_bits_for", lambda c, p: None, fn))  # noqa: E731
    for text in METATAG_COUNTS:
        fast_s, n = timed(lambda: count_posts(migrated, text))
        nobits_s, n2 = timed(no_bits(lambda: count_posts(migrated, text)), repeats=3)
        mig_s, n3 = timed(lambda: sql_count_raw(migrated, text), repeats=3)
        base_s, n4 = timed(lambda: sql_count_raw(plain, text), repeats=3)
        assert n == n2 == n3 == n4, f"counts disagree on {text!r}"
        rows.append({"query": text, "matches": n, "count_s": fast_s, "no_bitmap_s": nobits_s,
                     "baseline_sql_count_migrated_s": mig_s, "baseline_sql_count_s": base_s,
                     "speedup_vs_sql_migrated": mig_s / fast_s, "speedup_vs_baseline": base_s / fast_s})
        print(f"count {text!r}: {n:,} | {ms(fast_s)} vs plain SQL COUNT {ms(base_s)} x{base_s / fast_s:6.1f}, "
              f"on the migrated copy {ms(mig_s)} x{mig_s / fast_s:6.1f} | without bitmaps {ms(nobits_s)}")
    # Migration 0015: source: through the trigram table against 0014's NOCASE range (the
    # table hidden from the planner) and the plain SQL on the published file.
    from kohaku_data.db import source_trigrams
    text = "source:https://*pixiv*"
    fts_s, n = timed(lambda: count_posts(migrated, text))
    current, source_trigrams.is_current = source_trigrams.is_current, lambda db: False
    try:
        range_s, n2 = timed(lambda: count_posts(migrated, text), repeats=3)
    finally:
        source_trigrams.is_current = current
    base_s, n3 = timed(lambda: sql_count_raw(plain, text), repeats=3)
    assert n == n2 == n3, f"counts disagree on {text!r}"
    rows.append({"query": text, "matches": n, "count_trigram_s": fts_s, "count_0014_range_s": range_s,
                 "baseline_sql_count_s": base_s, "speedup_vs_baseline": base_s / fts_s})
    print(f"count {text!r} (0015 trigrams): {n:,} | {ms(fts_s)} vs plain SQL COUNT {ms(base_s)} "
          f"x{base_s / fts_s:6.1f}, 0014's index range {ms(range_s)}")
    for text in METATAG_PAGES:
        page_s, page = timed(lambda: query_ids(migrated, text, limit=PAGE + 1))
        nobits_s, page2 = timed(no_bits(lambda: query_ids(migrated, text, limit=PAGE + 1)), repeats=3)
        sql_s, page3 = timed(lambda: sql_page_raw(migrated, text, PAGE + 1), repeats=3)
        assert page == page2 == page3, f"pages disagree on {text!r}"
        rows.append({"query": text, "limit": PAGE + 1, "page_s": page_s, "no_bitmap_s": nobits_s,
                     "baseline_sql_limit_s": sql_s, "speedup_vs_sql": sql_s / page_s})
        print(f"page {text!r} of {PAGE}: {ms(page_s)} vs plain SQL LIMIT {ms(sql_s)} x{sql_s / page_s:6.1f} "
              f"| without bitmaps {ms(nobits_s)}")
    return rows


def bench_process(db_path: Path) -> dict:
    """Whole-process times (median of 5): what the user waits for."""
    python = sys.executable
    runs = {
        "kdata_query_count_s": [str(Path(python).parent / "kdata"), "query", TARGET, "--count",
                                "--db", str(db_path)],
        "python_bare_s": [python, "-c", "pass"],
        "import_cli_s": [python, "-c", "import kohaku_data.cli"],
    }
    out = {}
    for name, argv in runs.items():
        times = []
        for _ in range(6):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times[1:])
    print(f"whole process `kdata query {TARGET!r} --count`: {ms(out['kdata_query_count_s'])} "
          f"(python alone {ms(out['python_bare_s'])}, import kohaku_data.cli "
          f"{ms(out['import_cli_s'])})")
    return out


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k posts instead of 1M")
    parser.add_argument("--posts", type=int, default=None)
    parser.add_argument("--plain", type=Path, help="a DB as published (baseline)")
    parser.add_argument("--migrated", type=Path, help="a migrated copy of --plain")
    parser.add_argument("--queries", type=int, default=len(QUERIES),
                        help="run only the first N queries (the plain SQL takes minutes at 7.8M)")
    parser.add_argument("--no-migrate", action="store_true",
                        help="use --migrated as it is (someone else's cached file)")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--only-metatags", action="store_true", help="only issue 20's metatag rows")
    args = parser.parse_args()
    REPEATS = args.repeats
    if args.plain and args.migrated:
        plain_path, migrated_path = args.plain, args.migrated
    else:
        plain_path, migrated_path = sample_dbs(args.posts or (100_000 if args.quick else 1_000_000))
    if not args.no_migrate:
        ensure_migrated(migrated_path)
    with DanbooruDB.open(plain_path, readonly=True) as plain, \
            DanbooruDB.open(migrated_path, readonly=True) as migrated:
        posts = migrated.connection().execute("SELECT count(*) FROM post").fetchone()[0]
        metatags = bench_metatags(plain, migrated)
        if args.only_metatags:
            write_results("query-metatags", {"posts": posts, "repeats": REPEATS, "metatags": metatags,
                                             "plain_db": str(plain_path), "migrated_db": str(migrated_path)})
            return
        results = bench_results(plain, migrated, QUERIES[:args.queries])
        pages = bench_pages(migrated)
    process = bench_process(migrated_path)
    target = results[0]
    print(f"target {TARGET!r} on {posts:,} posts: ids {ms(target['fast_s'])}, count "
          f"{ms(target['count_s'])}, whole process {ms(process['kdata_query_count_s'])} "
          f"(limit 300 ms at 7.8M); plain SQL {ms(target['baseline_sql_unmigrated_s'])}")
    write_results("query", {
        "posts": posts, "repeats": REPEATS, "target": TARGET, "target_limit_s": 0.3,
        "page_limit_s": 0.1, "plain_db": str(plain_path), "migrated_db": str(migrated_path),
        "rows": results, "pages": pages, "process": process, "metatags": metatags,
        "note": "times are medians in one run; the baselines ran in the same run on the same "
                "files; the machine may be shared, so compare ratios",
    })


if __name__ == "__main__":
    main()
