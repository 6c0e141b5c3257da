"""Benchmark: JSONL post import into a fresh Danbooru2023 sqlite, on one core.

    .venv/bin/python benchmarks/bench_import.py [--quick] [--posts N]

Generates N posts (API format, ~30 tags each drawn by popularity from the top-20k tag list),
times `import_files` into an empty file, and compares it in the same run with
  * the floor: `json.loads` of every line of the same file (no validation, no sqlite), and
  * a naive baseline: per-post peewee `insert` of post, tags and relations, over a slice, and
  * sqlite's own floor: the same rows copied table to table in C, indexes deferred and rebuilt
    (no parsing, no Python per row), i.e. the most an importer on this schema can reach.
The import's time is split into writing rows and rebuilding the deferred indexes at the end.
Runs on one core (affinity, POLARS_MAX_THREADS=1); compare CPU figures on a busy machine.
Writes benchmarks/results/import.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os

# One core: polars must not start a thread pool (set before polars is first imported).
os.environ.setdefault("POLARS_MAX_THREADS", "1")
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import write_results  # noqa: E402

from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.db.enums import TAG_STRING_FIELDS, TagType  # noqa: E402
from kohaku_data.db.importer import import_files  # noqa: E402
from kohaku_data.keepers import SUMMARY_KEEPERS  # noqa: E402

TAGS_CSV = ROOT / "kohaku_data" / "resources" / "danbooru-tags-top20k.csv"
SAMPLE = ROOT / "tests" / "data" / "danbooru-posts-sample.json"
# Tags per post by type, roughly Danbooru's averages (general dominates).
TAGS_PER_TYPE = {TagType.GENERAL: 24, TagType.ARTIST: 1, TagType.CHARACTER: 2, TagType.COPYRIGHT: 1, TagType.META: 3}


def load_tag_pools() -> dict[TagType, tuple[np.ndarray, np.ndarray]]:
    by_type: dict[TagType, tuple[list[str], list[int]]] = {t: ([], []) for t in TagType}
    with open(TAGS_CSV, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            names, counts = by_type[TagType.from_danbooru_category(int(row[1]))]
            names.append(row[0])
            counts.append(int(row[2]))
    pools = {}
    for tag_type, (names, counts) in by_type.items():
        weights = np.asarray(counts, dtype=np.float64)
        pools[tag_type] = (np.asarray(names, dtype=object), weights / weights.sum())
    return pools


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    template = json.loads(SAMPLE.read_text())[0]
    pools = load_tag_pools()
    fields = {t: f for f, t in TAG_STRING_FIELDS.items()}
    # Draw all tags of all posts per type at once (vectorised), then slice per post.
    drawn = {t: rng.choice(len(pools[t][0]), size=(n, k), p=pools[t][1]) for t, k in TAGS_PER_TYPE.items()}
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            post = dict(template)
            post.update(id=i + 1, md5=hashlib.md5(str(i).encode()).hexdigest(), score=int(i % 97), fav_count=int(i % 53),
                        rating="gsqe"[i % 4], image_width=1000 + i % 900, file_size=100_000 + i)
            for tag_type in TAGS_PER_TYPE:
                names = pools[tag_type][0][np.unique(drawn[tag_type][i])]
                post[fields[tag_type]] = " ".join(names)
            post["tag_string"] = " ".join(post[f] for f in TAG_STRING_FIELDS)
            fh.write(json.dumps(post) + "\n")


def time_floor(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
    return time.perf_counter() - start


def time_naive(path: Path, db_path: Path, n: int) -> float:
    """Per-row peewee inserts (get-or-create tags, one insert per relation) over `n` posts."""
    db = DanbooruDB.create(db_path)
    columns = [f.name for f in db.Post._meta.sorted_fields]
    start = time.perf_counter()
    with open(path, "rb") as fh, db.database.atomic():
        for _, line in zip(range(n), fh):
            post = json.loads(line)
            row = {c: post.get(c) for c in columns}
            row["rating"] = "gsqe".index(row["rating"])
            for c in ("has_children", "is_deleted", "is_banned", "has_active_children", "has_large", "has_visible_children"):
                row[c] = int(bool(row[c]))
            db.Post.insert(**row).execute()
            for field, tag_type in TAG_STRING_FIELDS.items():
                for name in post[field].split():
                    tag, _ = db.Tag.get_or_create(name=name, defaults={"type": int(tag_type), "popularity": 0})
                    db.Tag.update(popularity=db.Tag.popularity + 1).where(db.Tag.id == tag.id).execute()
                    db.PostTagRelation.insert(post_id=post["id"], tag_id=tag.id).execute()
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def time_sqlite_floor(src: Path, dst: Path) -> tuple[float, float]:
    """(wall s, CPU s) for sqlite alone to build the same file: rows copied table to table in C
    (INSERT ... SELECT, the importer's row order), secondary indexes deferred and rebuilt, as the
    import does. No Python per row: what is left of the import's time after this is ours."""
    from kohaku_data.db.importer import IMPORT_CACHE_KIB
    from kohaku_data.db.migrate import defer_indexes, migrate, restore_deferred_indexes

    db = DanbooruDB.create(dst)
    migrate(db)
    conn = db.connection()
    conn.execute(f"PRAGMA cache_size = {-IMPORT_CACHE_KIB}")
    conn.execute(f"ATTACH DATABASE '{src}' AS src")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    defer_indexes(db)
    with db.database.atomic():
        for table in ("tag", "post", "posttagrelation"):
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table} ORDER BY id")
    restore_deferred_indexes(db)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    db.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30k posts (under a minute)")
    parser.add_argument("--posts", type=int, default=None)
    args = parser.parse_args()
    n = args.posts or (30_000 if args.quick else 200_000)
    naive_n = min(n, 2_000)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "posts.jsonl"
        t0 = time.perf_counter()
        generate(data, n)
        gen_s = time.perf_counter() - t0
        size = data.stat().st_size
        floor_s = time_floor(data)
        naive_s = time_naive(data, tmp / "naive.db", naive_n)
        db = DanbooruDB.create(tmp / "bench.db")
        cpu0 = time.process_time()
        summary = import_files(db, [data], keepers=SUMMARY_KEEPERS)
        import_cpu_s = time.process_time() - cpu0
        assert summary.posts.inserted == n and summary.rejected == 0, summary
        relations = db.connection().execute("SELECT count(*) FROM posttagrelation").fetchone()[0]
        db.close()
        sqlite_wall_s, sqlite_cpu_s = time_sqlite_floor(tmp / "bench.db", tmp / "floor.db")
        t0 = time.perf_counter()
        db = DanbooruDB.open(tmp / "bench.db")
        rerun = import_files(db, [data], keepers=SUMMARY_KEEPERS)
        assert rerun.posts.unchanged == n, "a rerun of the same file must change nothing"
        rerun_s = time.perf_counter() - t0
        db.close()
    import_rate = n / summary.seconds
    stream_s = summary.seconds - summary.index_seconds
    result = {
        "posts": n,
        "file_mb": round(size / 1e6, 1),
        "relations": relations,
        "generate_s": round(gen_s, 2),
        "import_s": round(summary.seconds, 3),
        "import_posts_per_s": round(import_rate),
        # CPU seconds of this process: less sensitive to other load on a shared machine.
        "import_posts_per_cpu_s": round(n / import_cpu_s),
        # Split of import_s: batches written (parse, posts, relations, popularity) vs the
        # deferred secondary indexes rebuilt at the end (sqlite's CREATE INDEX sorts).
        "rows_s": round(stream_s, 3),
        "rows_posts_per_s": round(n / stream_s),
        "index_rebuild_s": round(summary.index_seconds, 3),
        "rerun_unchanged_posts_per_s": round(n / rerun_s),
        "floor_json_loads_posts_per_s": round(n / floor_s),
        # sqlite's own cost of the same rows and indexes (no parsing, no Python per row).
        "floor_sqlite_posts_per_s": round(n / sqlite_wall_s),
        "floor_sqlite_posts_per_cpu_s": round(n / sqlite_cpu_s),
        "ratio_cpu_vs_sqlite_floor": round(sqlite_cpu_s / import_cpu_s, 3),
        "naive_peewee_posts": naive_n,
        "naive_peewee_posts_per_s": round(naive_n / naive_s),
        "ratio_vs_naive": round(import_rate / (naive_n / naive_s), 1),
        "ratio_vs_json_floor": round(import_rate / (n / floor_s), 3),
        "target_posts_per_s": 50_000,
        "cores": 1,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"{n} posts ({result['file_mb']} MB, {relations} relations; generated in {gen_s:.1f}s)")
    print(f"  import_files          {result['import_posts_per_s']:>10,} posts/s")
    print(f"  import_files (CPU)    {result['import_posts_per_cpu_s']:>10,} posts per CPU-second")
    print(f"    of which rows       {result['rows_posts_per_s']:>10,} posts/s ({stream_s:.2f} s) + index rebuild "
          f"{summary.index_seconds:.2f} s")
    print(f"  rerun (all unchanged) {result['rerun_unchanged_posts_per_s']:>10,} posts/s")
    print(f"  naive peewee inserts  {result['naive_peewee_posts_per_s']:>10,} posts/s  "
          f"(import is {result['ratio_vs_naive']}x)")
    print(f"  json.loads floor      {result['floor_json_loads_posts_per_s']:>10,} posts/s  "
          f"(import reaches {result['ratio_vs_json_floor']:.0%} of it)")
    print(f"  sqlite alone (floor)  {result['floor_sqlite_posts_per_s']:>10,} posts/s, "
          f"{result['floor_sqlite_posts_per_cpu_s']:,} per CPU-s  (import reaches "
          f"{result['ratio_cpu_vs_sqlite_floor']:.0%} of it in CPU time)")
    write_results("import", result)


if __name__ == "__main__":
    main()
