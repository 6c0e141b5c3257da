"""Captions/s of kohaku_data.captions vs hakubooru 0.0.3's KohakuCaptioner on the same sample DB.

    .venv/bin/python benchmarks/bench_captions.py [--quick]

- Sample DBs (kohaku_data.sample.metadata.write_sample_db, seed 0) are cached in benchmarks/.cache/.
- Ours: every post of the DB captioned by `iter_captions` in a child process (rate, and peak RSS
  from resource.getrusage); full mode measures 100k and 1M posts, --quick only 100k.
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
RESULTS = ROOT / "results" / "captions.json"
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


def child_ours(db_path: str) -> None:
    """In a child process: caption every post, print rate and peak RSS."""
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
        t1 = time.perf_counter()
        n = sum(f.height for f in iter_captions(db, config, th, chunk_size=CHUNK))
        t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"posts": n, "thresholds_s": t1 - t0, "captions_s": t2 - t1, "peak_rss_bytes": peak}))


def run_ours(db: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(db)], check=True, capture_output=True, text=True)
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
    args = parser.parse_args()
    if args.child:
        child_ours(args.child)
        return
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    results: dict = {"quick": args.quick, "chunk_size": CHUNK, "cpu_count": os.cpu_count(),
                     "sqlite_mmap_size": 0, "runs": {}}
    for size in sizes:
        db = sample_db(size)
        r = run_ours(db)
        results["runs"][str(size)] = r
        print(f"ours, {size:>9,} posts: {r['captions_per_s']:>10,.0f} captions/s "
              f"(thresholds {r['thresholds_s']:.2f}s), peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB", flush=True)
    db = sample_db(sizes[-1])
    with __import__("sqlite3").connect(db) as conn:
        all_ids = [r[0] for r in conn.execute("SELECT id FROM post")]
    ids = sorted(random.Random(0).sample(all_ids, min(len(all_ids), 5_000 if args.quick else 20_000)))
    python = ensure_hakubooru()
    base = run_hakubooru(python, db, ids) if python else run_reference(db, ids)
    base_rate = base["posts"] / base["seconds"]
    ours_rate = results["runs"][str(sizes[-1])]["captions_per_s"]
    results["baseline"] = {
        "name": "hakubooru==0.0.3 KohakuCaptioner" if python else "kohaku_data.captions.reference (hakubooru install failed)",
        "sample_posts": base["posts"], "seconds": base["seconds"], "captions_per_s": base_rate,
        "extrapolated_full_db_s": len(all_ids) / base_rate,
    }
    results["speedup"] = ours_rate / base_rate
    results["identical_captions_share"] = compatibility(db, base["captions"])
    print(f"baseline ({results['baseline']['name']}, {base['posts']:,} posts): {base_rate:,.0f} captions/s")
    print(f"speed-up on {sizes[-1]:,} posts: {results['speedup']:.0f}x (target >= 100x)")
    if results["identical_captions_share"] is not None:
        print(f"identical captions (quality off, DB order): {100 * results['identical_captions_share']:.1f}%")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
