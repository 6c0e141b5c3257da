"""Benchmark `kdata sample`: DB writer throughput and image rendering.

    .venv/bin/python benchmarks/bench_sample.py [--quick]

Figures, each beside a baseline measured in the same run:
- write_sample_db(N posts) vs a naive loader of the same rows (indexes kept, default journal),
  compared as relation rows per second;
- write_sample_images(300 posts) with all cores vs one worker.
Results: benchmarks/results/sample.json
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kohaku_data.db.handle import published_schema_sql  # noqa: E402
from kohaku_data.sample import write_sample_db, write_sample_images  # noqa: E402
from kohaku_data.sample.metadata import generate, load_tag_table  # noqa: E402

from benchmarks.report import write_results  # noqa: E402


def naive_load(path: Path, posts: int, seed: int) -> tuple[float, int]:
    """The obvious way: schema with indexes, default journal, executemany of the same rows."""
    sample = generate(seed, posts, load_tag_table())
    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.executescript(published_schema_sql())
    names = list(sample.posts)
    with conn:
        conn.executemany(f'INSERT INTO "post" ({", ".join(names)}) VALUES ({", ".join("?" * len(names))})',
                         zip(*sample.posts.values()))
        conn.executemany('INSERT INTO "posttagrelation" (post_id, tag_id) VALUES (?, ?)',
                         zip(sample.rel_post.tolist(), sample.rel_tag.tolist()))
    conn.close()
    return time.perf_counter() - t0, len(sample.rel_post)


def relations(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute('SELECT count(*) FROM "posttagrelation"').fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    posts = 100_000 if args.quick else 1_000_000
    baseline_posts = posts if args.quick else 200_000  # a naive 1M load takes minutes
    n_images = 60 if args.quick else 300
    results: dict[str, object] = {"quick": args.quick, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        write_sample_db(tmp_path / "sample.db", posts, seed=0, progress=True)
        ours = time.perf_counter() - t0
        rows = relations(tmp_path / "sample.db")
        base_s, base_rows = naive_load(tmp_path / "naive.db", baseline_posts, 0)
        ours_rate, base_rate = rows / ours, base_rows / base_s
        print(f"write_sample_db {posts:,} posts: {ours:.1f}s, {rows:,} relations, {ours_rate:,.0f} rel/s | "
              f"naive loader ({baseline_posts:,} posts): {base_rate:,.0f} rel/s | ratio {ours_rate / base_rate:.2f}x")
        results["db"] = {"posts": posts, "seconds": ours, "relations": rows, "rel_per_s": ours_rate,
                         "baseline": {"posts": baseline_posts, "seconds": base_s, "rel_per_s": base_rate},
                         "ratio": ours_rate / base_rate}
        timings = {}
        for workers in (1, os.cpu_count() or 1):
            out = tmp_path / f"img{workers}"
            write_sample_db(out / "danbooru.db", n_images, seed=0)
            t0 = time.perf_counter()
            files = write_sample_images(out, out / "danbooru.db", seed=0, workers=workers)
            timings[workers] = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in files)
        many = max(timings)
        print(f"write_sample_images {n_images} posts: {timings[many]:.1f}s with {many} workers | "
              f"1 worker: {timings[1]:.1f}s | ratio {timings[1] / timings[many]:.2f}x | {size / 1e6:.1f} MB")
        results["images"] = {"posts": n_images, "seconds": timings[many], "workers": many,
                             "baseline_1_worker_seconds": timings[1], "ratio": timings[1] / timings[many],
                             "bytes": size}
    write_results("sample", results)


if __name__ == "__main__":
    main()
