"""Captions/s of kohaku_data.captions vs hakubooru 0.0.3's KohakuCaptioner on the same sample DB.

    .venv/bin/python benchmarks/bench_captions.py [--quick]

- Sample DBs (kohaku_data.sample.metadata.write_sample_db, seed 0) are cached in benchmarks/.cache/.
- Ours: every post of the DB captioned by `iter_captions` in a child process (rate, CPU time and
  peak RSS from resource.getrusage; with workers, the largest worker's peak too), with one
  process (`workers=1`) and with every core (`workers=os.cpu_count()`), on the published file as
  it is and on a migrated copy (every migration, incl. 0004's covering `posttagrelation(post_id,
  tag_id)` index). Full mode measures 100k and 1M posts, --quick only 100k.
- Baseline: hakubooru==0.0.3 installed only into benchmarks/.cache/venv-hakubooru (made here if
  missing), run as a subprocess over a random sample of posts; its rate is extrapolated. With
  quality off and DB tag order on our side, the share of identical captions is reported too
  (layout compatibility). If the install fails, reference.py is timed instead, and said so.
Writes benchmarks/results/captions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT.parent))
from benchmarks.report import write_results  # noqa: E402
HB_VENV = CACHE / "venv-hakubooru"
CHUNK = 25_000  # posts per chunk: several chunks even at 100k, so reading overlaps captioning

HB_SCRIPT = r"""
import json, sys, time
from hakubooru.dataset import load_db
from hakubooru.dataset.db import Post
from hakubooru.caption import KohakuCaptioner
from hakubooru.tag_generator import year_tag, rating_tag
db_path, ids = sys.argv[1], json.loads(open(sys.argv[2]).read())
load_db(db_path)
full, compat = KohakuCaptioner(), KohakuCaptioner(processors=[year_tag, rating_tag])
out = {}
start = time.perf_counter()
for i in range(0, len(ids), 10000):
    for post in Post.select().where(Post.id.in_(ids[i:i + 10000])):
        full.caption(post, None)
elapsed = time.perf_counter() - start
for i in range(0, len(ids), 10000):
    for post in Post.select().where(Post.id.in_(ids[i:i + 10000])):
        out[post.id] = compat.caption(post, None)
print(json.dumps({"seconds": elapsed, "posts": len(ids), "captions": out}))
"""


def sample_db(posts: int) -> Path:
    path = CACHE / f"captions-{posts}.db"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        from kohaku_data.sample.metadata import write_sample_db

        write_sample_db(path, posts, 0)
        print(f"  made {path.name} in {time.perf_counter() - t:.1f}s", flush=True)
    return path


def migrated_db(posts: int) -> Path:
    """A copy of the sample DB with every migration applied (`kdata db migrate`)."""
    path = CACHE / f"captions-{posts}-migrated.db"
    if not path.exists():
        import shutil

        from kohaku_data.db import DanbooruDB
        from kohaku_data.db.migrate import migrate

        t = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(sample_db(posts), tmp)
        with DanbooruDB.open(tmp) as db:
            migrate(db)
        os.replace(tmp, path)
        print(f"  made {path.name} in {time.perf_counter() - t:.1f}s", flush=True)
    return path


def child_ours(db_path: str, workers: int) -> None:
    """In a child process: caption every post, print rate, CPU time and peak RSS."""
    from kohaku_data.captions import compute_thresholds, iter_captions
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    with DanbooruDB.open(db_path, readonly=True) as db:
        # The read-only handle maps up to 1 GiB of the file; those clean file pages would count in
        # ru_maxrss though they are page cache, not memory we hold. Off, RSS shows our own memory.
        db.connection().execute("PRAGMA mmap_size=0")
        config = CaptionConfig()
        t0 = time.perf_counter()
        th = compute_thresholds(db, config)
        t1, c1 = time.perf_counter(), _cpu()
        n = sum(f.height for f in iter_captions(db, config, th, chunk_size=CHUNK, workers=workers))
        t2, c2 = time.perf_counter(), _cpu()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 if workers > 1 else 0
    print(json.dumps({"posts": n, "workers": workers, "thresholds_s": t1 - t0, "captions_s": t2 - t1,
                      "captions_cpu_s": c2 - c1, "peak_rss_bytes": peak, "worker_peak_rss_bytes": worker_peak}))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers, once the pool closed)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_ours(db: Path, workers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(db), "--workers", str(workers)],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["captions_per_s"] = r["posts"] / r["captions_s"]
    r["total_per_s"] = r["posts"] / (r["captions_s"] + r["thresholds_s"])
    return r


def ensure_hakubooru() -> Path | None:
    python = HB_VENV / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(HB_VENV)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "hakubooru==0.0.3"], check=True,
                       capture_output=True, timeout=600)
        return python
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"  hakubooru==0.0.3 could not be installed ({exc}); timing reference.py instead", flush=True)
        return None


def run_hakubooru(python: Path, db: Path, ids: list[int]) -> dict:
    ids_file = CACHE / "hb-ids.json"
    ids_file.write_text(json.dumps(ids))
    script = CACHE / "hb_caption.py"
    script.write_text(HB_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([str(python), str(script), str(db), str(ids_file)], check=True, capture_output=True,
                         text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_reference(db: Path, ids: list[int]) -> dict:
    from kohaku_data.captions import compute_thresholds
    from kohaku_data.captions.reference import reference_captions
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    with DanbooruDB.open(db, readonly=True) as handle:
        th = compute_thresholds(handle, CaptionConfig())
        t = time.perf_counter()
        reference_captions(handle, ids, CaptionConfig(), th)
        return {"seconds": time.perf_counter() - t, "posts": len(ids), "captions": {}}


def compatibility(db: Path, hb_captions: dict[str, str]) -> float | None:
    """Share of posts whose caption equals hakubooru's (their year+rating processors, DB order)."""
    if not hb_captions:
        return None
    from kohaku_data.captions import caption_posts, compute_thresholds
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    config = CaptionConfig(quality=False, tag_order="db")
    with DanbooruDB.open(db, readonly=True) as handle:
        ids = [int(i) for i in hb_captions]
        ours = dict(caption_posts(handle, ids, config, compute_thresholds(handle, config))
                    .select("id", "caption").iter_rows())
    same = sum(ours.get(int(i)) == c for i, c in hb_captions.items())
    return same / len(hb_captions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100k posts only, small baseline sample")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_ours(args.child, args.workers)
        return
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    cores = os.cpu_count() or 1
    results: dict = {"quick": args.quick, "chunk_size": CHUNK, "cpu_count": cores,
                     "sqlite_mmap_size": 0, "runs": {}}
    for size in sizes:
        for label, db in (("published", sample_db(size)), ("migrated", migrated_db(size))):
            for workers in sorted({1, cores}):
                r = run_ours(db, workers)
                results["runs"][f"{size}/{label}/workers={workers}"] = r
                peak = max(r["peak_rss_bytes"], r["worker_peak_rss_bytes"])
                print(f"ours, {size:>9,} posts, {label:>9} file, {workers} worker(s): "
                      f"{r['captions_per_s']:>9,.0f} captions/s, CPU {r['captions_cpu_s']:.2f}s "
                      f"(thresholds {r['thresholds_s']:.2f}s), peak RSS {peak / 2**20:,.0f} MiB", flush=True)
    db = sample_db(sizes[-1])
    with __import__("sqlite3").connect(db) as conn:
        all_ids = [r[0] for r in conn.execute("SELECT id FROM post")]
    ids = sorted(random.Random(0).sample(all_ids, min(len(all_ids), 5_000 if args.quick else 20_000)))
    python = ensure_hakubooru()
    base = run_hakubooru(python, db, ids) if python else run_reference(db, ids)
    base_rate = base["posts"] / base["seconds"]
    runs = {k: v["captions_per_s"] for k, v in results["runs"].items() if k.startswith(f"{sizes[-1]}/")}
    results["baseline"] = {
        "name": "hakubooru==0.0.3 KohakuCaptioner" if python else "kohaku_data.captions.reference (hakubooru install failed)",
        "sample_posts": base["posts"], "seconds": base["seconds"], "captions_per_s": base_rate,
        "extrapolated_full_db_s": len(all_ids) / base_rate,
    }
    results["speedups"] = {k: rate / base_rate for k, rate in runs.items()}
    # Headline: what `kdata caption` does by default (one process: its reader thread already
    # keeps the second core busy) on the file as `kdata db migrate` leaves it.
    results["speedup"] = results["speedups"][f"{sizes[-1]}/migrated/workers=1"]
    results["identical_captions_share"] = compatibility(db, base["captions"])
    print(f"baseline ({results['baseline']['name']}, {base['posts']:,} posts): {base_rate:,.0f} captions/s")
    for key, ratio in results["speedups"].items():
        print(f"speed-up, {key}: {ratio:.0f}x")
    print(f"speed-up on {sizes[-1]:,} posts (migrated file, 1 process as `kdata caption` runs): "
          f"{results['speedup']:.0f}x (target >= 100x)")
    if results["identical_captions_share"] is not None:
        print(f"identical captions (quality off, DB order): {100 * results['identical_captions_share']:.1f}%")
    write_results("captions", results)


if __name__ == "__main__":
    main()
