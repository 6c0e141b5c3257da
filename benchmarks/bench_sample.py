"""Benchmark `kdata sample`: the DB as a user makes it, and image rendering.

    .venv/bin/python benchmarks/bench_sample.py [--quick] [--posts N] [--before REV]

Figures, each beside a baseline measured in the same run:
- `kdata sample OUT --posts N --no-images` (N = 1M; 100k with --quick), whole process: wall and
  CPU seconds, peak anonymous RSS of the process tree (as bench_scale.py measures issue 10's
  row); baseline: a naive loader of the same rows (indexes kept, default journal, one row a
  statement), compared as relation rows per second (at 200k posts: a naive 1M load takes minutes);
- with `--before REV` (e.g. HEAD~1): the same command with the package as it was at REV
  (`git archive`, run from a temporary folder on the same machine, right before ours), and
  whether the two DBs hold the same rows (a sha256 of `sqlite3 .dump`-style row text);
- write_sample_images(300 posts) with all cores vs one worker.
Other engineers share the machine: compare CPU seconds and same-run ratios more than wall time.
Results: benchmarks/results/sample.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kohaku_data.db.handle import published_schema_sql  # noqa: E402
from kohaku_data.sample import write_sample_db, write_sample_images  # noqa: E402
from kohaku_data.sample.metadata import generate, load_tag_table  # noqa: E402

from benchmarks.bench_scale import run  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

KDATA = str(Path(sys.executable).parent / "kdata")


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


def content_digest(path: Path) -> str:
    """sha256 of every row of the published tables in id order and of the schema text."""
    digest = hashlib.sha256()
    with sqlite3.connect(path) as conn:
        for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name"):
            digest.update(sql.encode())
        for table in ("post", "tag", "posttagrelation"):
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY id'):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def sample_command(out: Path, posts: int, *, before: Path | None = None) -> dict:
    """`kdata sample OUT --posts N --no-images` as a user runs it (or the package at `before`)."""
    label = f"kdata sample --posts {posts:,} --no-images" + (" (before)" if before else "")
    cmd = [KDATA, "sample", str(out), "--posts", str(posts), "--no-images"]
    if before is not None:  # the old package first on the path, run from outside the checkout
        cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop(1)); "
               "from kohaku_data.cli import app; app()", str(before), *cmd[1:]]
    load = load_average()
    r = run(cmd, label)
    if r["exit"]:
        raise SystemExit(f"{label} failed")
    r.update(load_before=load, load_after=load_average(), relations=relations(out / "danbooru.db"),
             file_bytes=(out / "danbooru.db").stat().st_size)
    return r


def archive(rev: str, into: Path) -> Path:
    """The package (and migrations/) as it was at `rev`, unpacked under `into`."""
    into.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "kohaku_data", "migrations"],
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--posts", type=int, help="posts of the timed sample (default 1M; 100k with --quick)")
    parser.add_argument("--before", metavar="REV", help="also time the package at this git revision, same run")
    args = parser.parse_args()
    posts = args.posts or (100_000 if args.quick else 1_000_000)
    baseline_posts = min(posts, 100_000 if args.quick else 200_000)  # a naive 1M load takes minutes
    n_images = 60 if args.quick else 300
    results: dict[str, object] = {"quick": args.quick, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        before = None
        if args.before:
            old = sample_command(tmp_path / "before", posts, before=archive(args.before, tmp_path / "rev"))
            old["rev"] = args.before
            before = old
        ours = sample_command(tmp_path / "ours", posts)
        rows = ours["relations"]
        base_s, base_rows = naive_load(tmp_path / "naive.db", baseline_posts, 0)
        ours_rate, base_rate = rows / ours["seconds"], base_rows / base_s
        print(f"kdata sample {posts:,} posts: {ours['seconds']:.1f}s wall, {ours['cpu_s']:.1f}s CPU, "
              f"peak anon {ours['peak_anon_bytes'] / 2**30:.2f} GiB, {rows:,} relations, {ours_rate:,.0f} rel/s "
              f"(load {ours['load_before']:.1f}) | naive loader ({baseline_posts:,} posts): {base_rate:,.0f} rel/s "
              f"| ratio {ours_rate / base_rate:.2f}x")
        results["db"] = {**ours, "posts": posts, "rel_per_s": ours_rate,
                         "baseline": {"posts": baseline_posts, "seconds": base_s, "rel_per_s": base_rate},
                         "ratio": ours_rate / base_rate}
        if before:
            same = content_digest(tmp_path / "before" / "danbooru.db") == content_digest(tmp_path / "ours" / "danbooru.db")
            before.update(same_rows_as_ours=same, wall_ratio=before["seconds"] / ours["seconds"],
                          cpu_ratio=before["cpu_s"] / ours["cpu_s"])
            print(f"  before ({args.before}): {before['seconds']:.1f}s wall, {before['cpu_s']:.1f}s CPU, peak anon "
                  f"{before['peak_anon_bytes'] / 2**30:.2f} GiB (load {before['load_before']:.1f}) | ours "
                  f"{before['wall_ratio']:.2f}x faster wall, {before['cpu_ratio']:.2f}x less CPU | same rows: {same}")
            results["db"]["before"] = before
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
