"""Captions/s of kohaku_data.captions vs hakubooru 0.0.3's KohakuCaptioner on the same sample DB.

    .venv/bin/python benchmarks/bench_captions.py [--quick]

- Sample DBs (kohaku_data.sample.metadata.write_sample_db, seed 0) are cached in benchmarks/.cache/.
- Ours: every post of the DB captioned by `iter_captions` with the CLI's chunk size in a child
  process (rate, CPU time, peak anonymous memory of the process and its workers), with one
  process (`workers=1`) and with every core (`workers=os.cpu_count()`), on the published file as
  it is and on a migrated copy (every migration, incl. 0004's covering `posttagrelation(post_id,
  tag_id)` index). Full mode measures 100k and 1M posts, --quick only 100k.
- Baseline: hakubooru==0.0.3 installed only into benchmarks/.cache/venv-hakubooru (made here if
  missing), run as a subprocess over a random sample of posts of the largest DB, on the published
  and on the migrated file; each ratio divides by the baseline on the same file. With
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT.parent))
from benchmarks.report import write_results  # noqa: E402
HB_VENV = CACHE / "venv-hakubooru"

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
        from kohaku_data.keepers import SUMMARY_KEEPERS

        t = time.perf_counter()
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(sample_db(posts), tmp)
        with DanbooruDB.open(tmp) as db:
            migrate(db, keepers=SUMMARY_KEEPERS)
        os.replace(tmp, path)
        print(f"  made {path.name} in {time.perf_counter() - t:.1f}s", flush=True)
    return path


class AnonPeak:
    """Peak anonymous memory (RssAnon) of this process plus its children, sampled every `every`
    seconds (bytes).

    ru_maxrss would also count the file pages sqlite maps (page cache, shared, dropped
    under pressure): on a 1.6 GB DB that is most of the file, not memory the job holds."""

    def __init__(self, every: float = 0.005) -> None:
        self.peak = 0
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, sum(anon_bytes(pid) for pid in [os.getpid(), *_children()]))


def _children() -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()]
    except OSError:
        return []


def anon_bytes(pid: int) -> int:
    """Anonymous RSS of one process (file pages sqlite maps are page cache, not its memory)."""
    return status_bytes(pid, "RssAnon")


def status_bytes(pid: int | str, field: str) -> int:
    """A size field of /proc/PID/status (`RssAnon`, `VmRSS`, `VmHWM`…; PID "self" too) in
    bytes; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child_ours(db_path: str, workers: int) -> None:
    """In a child process: caption every post, print rate, CPU time and peak memory (with the
    process settings `kdata caption` applies)."""
    from kohaku_data.runtime import bulk_process

    bulk_process()  # before numpy and polars are imported
    from kohaku_data.captions import DEFAULT_CHUNK_SIZE, compute_thresholds, iter_captions
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    with DanbooruDB.open(db_path, readonly=True) as db, AnonPeak() as memory:
        config = CaptionConfig()
        t0 = time.perf_counter()
        th = compute_thresholds(db, config)
        t1, c1 = time.perf_counter(), _cpu()
        frames = iter_captions(db, config, th, chunk_size=DEFAULT_CHUNK_SIZE, workers=workers)
        n = sum(f.height for f in frames)
        t2, c2 = time.perf_counter(), _cpu()
    print(json.dumps({"posts": n, "workers": workers, "chunk_size": DEFAULT_CHUNK_SIZE, "thresholds_s": t1 - t0,
                      "captions_s": t2 - t1, "captions_cpu_s": c2 - c1, "peak_anon_bytes": memory.peak,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


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
    results: dict = {"quick": args.quick, "cpu_count": cores, "runs": {}}
    for size in sizes:
        for label, db in (("published", sample_db(size)), ("migrated", migrated_db(size))):
            for workers in sorted({1, cores}):
                r = run_ours(db, workers)
                results["runs"][f"{size}/{label}/workers={workers}"] = r
                peak = r["peak_anon_bytes"]
                print(f"ours, {size:>9,} posts, {label:>9} file, {workers} worker(s): "
                      f"{r['captions_per_s']:>9,.0f} captions/s, CPU {r['captions_cpu_s']:.2f}s "
                      f"(thresholds {r['thresholds_s']:.2f}s), peak memory {peak / 2**20:,.0f} MiB", flush=True)
    with __import__("sqlite3").connect(sample_db(sizes[-1])) as conn:
        all_ids = [r[0] for r in conn.execute("SELECT id FROM post")]
    ids = sorted(random.Random(0).sample(all_ids, min(len(all_ids), 5_000 if args.quick else 20_000)))
    python = ensure_hakubooru()
    name = "hakubooru==0.0.3 KohakuCaptioner" if python else "kohaku_data.captions.reference (hakubooru install failed)"
    results["baselines"], results["speedups"], captions = {}, {}, {}
    # The baseline runs on the same file as ours (its per-post queries use the post_id index,
    # which migration 0004 makes covering), so each ratio compares like with like.
    for label, db in (("published", sample_db(sizes[-1])), ("migrated", migrated_db(sizes[-1]))):
        base = run_hakubooru(python, db, ids) if python else run_reference(db, ids)
        rate = base["posts"] / base["seconds"]
        captions = captions or base["captions"]
        results["baselines"][label] = {"name": name, "sample_posts": base["posts"], "seconds": base["seconds"],
                                       "captions_per_s": rate, "extrapolated_full_db_s": len(all_ids) / rate}
        print(f"baseline ({name}, {label} file, {base['posts']:,} posts): {rate:,.0f} captions/s", flush=True)
        for key, r in results["runs"].items():
            if key.startswith(f"{sizes[-1]}/{label}/"):
                results["speedups"][key] = r["captions_per_s"] / rate
                print(f"speed-up, {key}: {results['speedups'][key]:.0f}x")
    # Headline: what `kdata caption` does by default (one process: its reader threads keep the
    # second core busy) on the file as `kdata db migrate` leaves it.
    results["speedup"] = results["speedups"][f"{sizes[-1]}/migrated/workers=1"]
    results["identical_captions_share"] = compatibility(sample_db(sizes[-1]), captions)
    print(f"speed-up on {sizes[-1]:,} posts (migrated file, 1 process as `kdata caption` runs): "
          f"{results['speedup']:.0f}x (target >= 100x)")
    if results["identical_captions_share"] is not None:
        print(f"identical captions (quality off, DB order): {100 * results['identical_captions_share']:.1f}%")
    write_results("captions", results)


if __name__ == "__main__":
    main()
