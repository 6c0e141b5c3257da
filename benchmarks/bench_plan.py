"""Benchmark the build plan's memory at Danbooru2023 size: source index + plan for 7.8M files.

    .venv/bin/python benchmarks/bench_plan.py [--quick] [--files N]

Each representation is built in a fresh process (so one's garbage cannot hide in the other's
figure) from the same synthetic inputs: 1,000 danbooru2023-style tars (`data-0XXX.tar`, members
`<id>.jpg|png`, real offsets and sizes) and a post table (id, md5, file_size).
- columnar (kdata now): the real code path — `sources._Builder` (name checks, winners) over the
  tars' member lists, then `plan.join_posts` with the posts frame; bytes held = the plan's
  polars frame + container names (`BuildPlan.nbytes`), and the process's RSS growth.
- objects (the baseline, kdata before): one `SourceEntry` + `PlanItem` per file as the old code
  held them (display name, member, ext, md5 hex strings per file); bytes held measured by
  tracemalloc and RSS growth, on `--baseline-files` files (linear in the count: reported per file).
Also timed: building one task's items from a column slice (`plan.slice`), what a worker gets.
Results: benchmarks/results/plan.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from benchmarks.report import write_results  # noqa: E402

TARS = 1000
TARGET_BYTES_PER_FILE = 100


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields[field].split()[0]) * 1024


def _rss() -> int:
    """Anonymous resident memory of this process (file pages mapped are not memory use), after
    handing freed memory back to the system (so garbage does not count as held)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status("RssAnon")


def _members(n: int, seed: int = 7):
    """(tar name, [(member, offset, size)]) per tar: ids 1..~1.1n with gaps, sizes ~0.2–6 MB."""
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(int(n * 1.1), size=n, replace=False) + 1)
    sizes = rng.integers(200_000, 6_000_000, size=n)
    png = rng.random(n) < 0.15
    for tar, chunk in enumerate(np.array_split(np.arange(n), TARS)):
        offsets = 512 + np.concatenate([[0], np.cumsum(1024 + (sizes[chunk[:-1]] + 511) // 512 * 512)])
        names = [f"{k}.{'png' if p else 'jpg'}" for k, p in zip(keys[chunk].tolist(), png[chunk].tolist())]
        yield f"data-{tar:04d}.tar", list(zip(names, offsets.tolist(), sizes[chunk].tolist()))


def _posts(n: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(int(n * 1.1), size=n, replace=False) + 1)
    md5 = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    return pl.DataFrame({
        "key": keys, "md5": pl.Series([md5.tobytes()]).bin.encode("hex").str.extract_all(r".{32}").explode()
        .str.decode("hex"), "file_size": rng.integers(200_000, 6_000_000, size=n),
    })


def columnar(n: int, queue) -> None:
    from kohaku_data import tar_index
    from kohaku_data.assembly.plan import join_posts
    from kohaku_data.sources import _Builder

    posts = _posts(n)  # the DB's side, made before the baseline RSS is taken
    before = _rss()
    t0 = time.perf_counter()
    builder = _Builder("s3://bucket/danbooru2023")
    for name, members in _members(n):
        builder.add_tar(name, tar_index.TarScan(members))
    source = builder.finish()
    t_source = time.perf_counter() - t0
    rejects: list[dict] = []
    from kohaku_data.assembly.plan import BuildPlan

    plan = BuildPlan(source, join_posts(source, posts, rejects), rejects)
    t_plan = time.perf_counter() - t0 - t_source
    source.files = source.files.clear()  # the build keeps the plan; the source's rows are in it
    held = plan.nbytes()
    peak = _status("VmHWM") - before
    rss = _rss() - before  # `posts` is still alive, as it was when `before` was taken
    del posts
    t1 = time.perf_counter()
    for start in range(0, 64 * 200, 64):  # 200 tasks' worth of items from column slices
        plan.slice(start * 1000 % (len(plan) - 64), start * 1000 % (len(plan) - 64) + 64)
    per_task = (time.perf_counter() - t1) / 200
    queue.put({"files": len(plan), "held_bytes": held, "rss_growth": rss, "peak_growth": peak, "source_s": t_source,
               "plan_s": t_plan, "task_slice_ms": per_task * 1e3})


def objects(n: int, queue, traced: bool = True) -> None:
    """The old representation, as kdata held it before: objects per file (held bytes by
    tracemalloc, RSS growth in a second run without it: tracemalloc costs memory itself)."""
    from kohaku_data.assembly.plan import PlanItem
    from kohaku_data.sources import SourceEntry

    posts = _posts(n)
    md5_hex = posts["md5"].bin.encode("hex").to_list()
    file_sizes = posts["file_size"].to_list()
    before = _rss()
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    items = []
    i = 0
    for name, members in _members(n):
        path = f"/data/danbooru2023/{name}"  # one string shared by a tar's entries, as before
        for member, offset, size in members:
            stem, _, ext = member.partition(".")
            entry = SourceEntry(int(stem), f"{name}:{member}", ext.lower(), size, path, member, offset)
            items.append(PlanItem(entry, md5_hex[i], file_sizes[i]))
            i += 1
    elapsed = time.perf_counter() - t0
    held = tracemalloc.get_traced_memory()[0] if traced else None
    tracemalloc.stop()
    queue.put({"files": len(items), "held_bytes": held, "rss_growth": _rss() - before, "build_s": elapsed})


def objects_untraced(n: int, queue) -> None:
    objects(n, queue, traced=False)


def _in_child(fn, n: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=fn, args=(n, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--files", type=int, default=None)
    parser.add_argument("--baseline-files", type=int, default=None)
    args = parser.parse_args()
    files = args.files or (780_000 if args.quick else 7_800_000)
    baseline = args.baseline_files or min(files, 1_000_000)  # objects at 7.8M: ~2.7 GB; per file it is linear
    new = _in_child(columnar, files)
    old = _in_child(objects, baseline)
    old["rss_growth"] = _in_child(objects_untraced, baseline)["rss_growth"]
    new_per, old_per = new["held_bytes"] / new["files"], old["held_bytes"] / old["files"]
    print(f"plan of {new['files']:,} files, columnar: {new_per:.1f} B/file held "
          f"({new['held_bytes'] / 2**20:.0f} MiB; RSS +{new['rss_growth'] / new['files']:.1f} B/file, "
          f"peak +{new['peak_growth'] / new['files']:.1f} B/file while building), "
          f"source index {new['source_s']:.1f} s + plan join {new['plan_s']:.1f} s; "
          f"one task's items from a slice {new['task_slice_ms']:.2f} ms")
    print(f"baseline, objects per file ({old['files']:,} files): {old_per:.1f} B/file held "
          f"(RSS +{old['rss_growth'] / old['files']:.1f} B/file) -> {old_per * files / 2**30:.2f} GiB at {files:,}")
    print(f"ratio: columnar holds {old_per / new_per:.1f}x less; target <= {TARGET_BYTES_PER_FILE} B/file: "
          f"{'met' if new_per <= TARGET_BYTES_PER_FILE else 'NOT met'}")
    write_results("plan", {
        "quick": args.quick, "files": files, "columnar": new, "objects_baseline": old,
        "columnar_bytes_per_file": new_per, "objects_bytes_per_file": old_per,
        "ratio": old_per / new_per, "target_bytes_per_file": TARGET_BYTES_PER_FILE, "cpus": os.cpu_count(),
    })


if __name__ == "__main__":
    main()
