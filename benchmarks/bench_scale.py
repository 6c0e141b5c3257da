"""Every command of issue 10's table at full Danbooru2023 size, run as a user runs it.

    .venv/bin/python benchmarks/bench_scale.py [--posts 7800000] [--build-only] [--no-hakubooru]
        [--rows caption,small,query,info,serve,metatags]   (--posts 12000000: ids to ~15M, the
        snapshot's unknown-flag blocks included; hakubooru's rate is always measured on a
        20k-post slice of the same file, so the caption row is feasible at any size)
    make bench ONLY=scale            (never part of `make test`; a plain `make bench` skips it)

- The DB: `kdata sample OUT --posts N --no-images` (the real tags plus the synthetic long tail:
  ~1M tag names at 7.8M posts), made once and cached in benchmarks/.cache/scale-N/ with the time
  and peak memory of making it (build.json); then a copy goes through `kdata db migrate` (timed,
  file size before/after), cached as migrated.db. The 7.8M DB takes ~11 GB and many minutes.
- Two DBs of 200k posts, one as `kdata sample` makes it and one with a 1M-row tag table
  (`--tail-tags 980000`): the fixed cost of a small caption job (imports, thresholds, tag-table
  prep) is what those rows measure.
- Each row is a subprocess (`kdata ...`, or a fresh `kdata serve` on 127.0.0.1 for /stats and
  /posts), timed whole-process, peak memory as anonymous RSS of the process tree (file pages
  that sqlite reads are page cache, not memory the job holds), beside its baseline measured in
  the same run: hakubooru 0.0.3 (benchmarks/.cache/venv-hakubooru, as bench_captions.py) for
  captions, a plain full-scan SQL statement for queries, info and stats.
Results: benchmarks/results/scale.json. Other engineers share the machine: figures are noisy,
ratios (same run) are the comparable part.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
sys.path.insert(0, str(ROOT.parent))
from benchmarks.bench_captions import anon_bytes, ensure_hakubooru, run_hakubooru  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

KDATA = [str(Path(sys.executable).parent / "kdata")]
SMALL_POSTS, SMALL_TAIL = 200_000, 980_000
SMALL_REPEATS = 5  # the 200k rows: the median of five runs
QUERY = "1girl solo -comic rating:g,s score:>10"
QUERY_SQL = (  # the same question as plain SQL on the published indexes, no kdata code
    "SELECT count(*) FROM post p WHERE p.rating IN (0, 1) AND p.score > 10 "
    "AND EXISTS (SELECT 1 FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE r.post_id = p.id AND t.name = '1girl') "
    "AND EXISTS (SELECT 1 FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE r.post_id = p.id AND t.name = 'solo') "
    "AND NOT EXISTS (SELECT 1 FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE r.post_id = p.id AND t.name = 'comic')"
)
POSTS_SQL = (
    "SELECT p.id FROM post p JOIN posttagrelation r ON r.post_id = p.id "
    "WHERE r.tag_id = (SELECT id FROM tag WHERE name = 'long_hair') ORDER BY p.score DESC, p.id DESC LIMIT 20"
)
STATS_SQL = (
    "SELECT (SELECT count(*) FROM post), (SELECT count(*) FROM tag), (SELECT count(*) FROM posttagrelation), "
    "(SELECT min(created_at) || max(created_at) FROM post), (SELECT group_concat(n) FROM "
    "(SELECT count(*) AS n FROM post GROUP BY rating)), (SELECT group_concat(n) FROM (SELECT count(*) AS n FROM tag GROUP BY type))"
)
# Issue 10's figures before this work ("now") and its targets, printed beside each row.
ISSUE = {
    "sample": ("8.3 min, 16.5 GB peak", "<= 4 GB peak, time not worse"),
    "db migrate": ("264 s, +2.2 GB", "report; file <= 1.3x"),
    "caption": ("55 s (65x hakubooru)", "<= 30 s"),
    "caption 200k": ("2.4 s (40x hakubooru)", ">= 100x hakubooru"),
    "caption 200k 1M tags": ("4.4 s", ">= 100x hakubooru"),
    "query --count": ("1.9 s", "<= 0.3 s"),
    "/posts": ("2.3 s", "<= 0.1 s"),
    "/stats": ("14.3 s", "<= 0.5 s (first, fresh serve)"),
    "db info": ("15.8 s", "<= 1 s"),
    "caption stats": ("13.4 s, 3.3 GB", "<= 5 s"),
}
CAPTION_STATS_SQL = "SELECT rating, substr(created_at, 1, 4), count(*), avg(fav_count) FROM post GROUP BY 1, 2"


# --------------------------------------------------------------------------------------------
# Processes and memory
# --------------------------------------------------------------------------------------------
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class TreePeak:
    """Peak anonymous RSS of a process and its descendants, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, sum(anon_bytes(p) for p in _tree(self.pid)))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(cmd: list[str], label: str, *, timeout: float = 7200) -> dict:
    """Run `cmd` to the end: wall seconds, CPU seconds of its tree (user + system: what the
    command costs, less swayed by other jobs on the machine than wall time), peak anonymous RSS
    of its tree, last output lines."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = TreePeak(proc.pid)
    out, _ = proc.communicate(timeout=timeout)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    r = {"cpu_s": cpu, "cmd": " ".join(["kdata", *cmd[1:]] if cmd[0] == KDATA[0] else cmd), "seconds": seconds,
         "peak_anon_bytes": peak.stop(), "exit": proc.returncode,
         "output_tail": out.strip().splitlines()[-3:] if out.strip() else []}
    print(f"  {label}: {seconds:.2f}s (CPU {cpu:.2f}s), peak anon {r['peak_anon_bytes'] / 2**20:,.0f} MiB, exit {proc.returncode}",
          flush=True)
    if proc.returncode:
        print("\n".join(out.strip().splitlines()[-15:]), flush=True)
    return r


def run_median(cmd: list[str], label: str, repeats: int, after_each: Callable[[], object] = lambda: None) -> dict:
    """`run` `repeats` times: the run of median wall time, with every run's time kept (short
    commands swing by ±10% here, and the first can meet a page cache the run before emptied)."""
    runs = []
    for _ in range(repeats):
        runs.append(run(cmd, label))
        after_each()
    r = dict(sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2])
    if repeats > 1:
        r["runs_seconds"] = [x["seconds"] for x in runs]
    return r


def sql_time(db: Path, sql: str, label: str) -> dict:
    """A plain sqlite3 statement, its own connection (cold statement cache, warm page cache)."""
    t0 = time.perf_counter()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(sql).fetchall()
    seconds = time.perf_counter() - t0
    print(f"  baseline {label}: {seconds:.2f}s", flush=True)
    return {"sql": sql, "seconds": seconds, "rows": len(rows)}


# --------------------------------------------------------------------------------------------
# The cached DBs
# --------------------------------------------------------------------------------------------
def build_db(posts: int, tail: int | None = None) -> tuple[Path, dict]:
    """OUT/danbooru.db made by `kdata sample`, cached with the measurement of making it."""
    folder = CACHE / (f"scale-{posts}" + (f"-tail{tail}" if tail is not None else ""))
    db, meta = folder / "sample" / "danbooru.db", folder / "build.json"
    if meta.exists() and (db.exists() or (folder / "migrated.db").exists()):
        # Only migrated.db is measured: the published copy may be deleted once it exists (at
        # 12M posts the two take ~45 GB while migrating).
        return db, json.loads(meta.read_text())
    shutil.rmtree(folder / "sample", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [*KDATA, "sample", str(folder / "sample"), "--posts", str(posts), "--no-images"]
    if tail is not None:
        cmd += ["--tail-tags", str(tail)]
    r = run(cmd, f"kdata sample --posts {posts:,}")
    if r["exit"]:
        raise SystemExit("kdata sample failed")
    r["file_bytes"] = db.stat().st_size
    with sqlite3.connect(db) as conn:
        r["relations"] = conn.execute("SELECT max(id) FROM posttagrelation").fetchone()[0]
        r["tags"] = conn.execute("SELECT count(*) FROM tag").fetchone()[0]
    meta.write_text(json.dumps(r, indent=2))
    return db, r


def migrated_db(published: Path) -> tuple[Path, dict]:
    """A copy through `kdata db migrate`; rerun on the cached copy (a no-op unless migrations
    were added since) so it is always current."""
    path, meta = published.parent.parent / "migrated.db", published.parent.parent / "migrate.json"
    if not (path.exists() and meta.exists()):
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(published, tmp)
        before = tmp.stat().st_size
        r = run([*KDATA, "db", "migrate", "--db", str(tmp)], "kdata db migrate (fresh copy)")
        if r["exit"]:
            raise SystemExit("kdata db migrate failed")
        r.update(bytes_before=before, bytes_after=tmp.stat().st_size)
        r["size_ratio"] = r["bytes_after"] / before
        os.replace(tmp, path)
        meta.write_text(json.dumps(r, indent=2))
    r = json.loads(meta.read_text())
    again = run([*KDATA, "db", "migrate", "--db", str(path)], "kdata db migrate (cached copy, pending only)")
    r["rerun"] = {k: again[k] for k in ("seconds", "exit")}
    return path, r


# --------------------------------------------------------------------------------------------
# The rows
# --------------------------------------------------------------------------------------------
def hakubooru_rate(python: Path | None, db: Path, sample: int) -> dict | None:
    if python is None:
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        top = conn.execute("SELECT max(id) FROM post").fetchone()[0]
        ids = sorted({r[0] for r in conn.execute(
            "SELECT id FROM post WHERE id IN (%s)" % ",".join(map(str, random.Random(0).sample(range(1, top + 1), min(top, sample * 2)))))})[:sample]
    t0 = time.perf_counter()
    base = run_hakubooru(python, db, ids)
    rate = base["posts"] / base["seconds"]
    print(f"  baseline hakubooru 0.0.3 on {db.name}: {rate:,.0f} captions/s ({base['posts']:,} posts)", flush=True)
    return {"posts": base["posts"], "seconds": base["seconds"], "captions_per_s": rate,
            "process_seconds": time.perf_counter() - t0}


def caption_row(db: Path, posts: int, out: Path, hb: dict | None, workers: int, repeats: int = 1) -> dict:
    """The whole `kdata caption` process; with `repeats`, the run of median wall time (a ~1 s
    run swings by ±10% here with what else the machine does), every run's time kept."""
    cmd = [*KDATA, "caption", "--db", str(db), "--out", str(out)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    r = run_median(cmd, f"kdata caption --out c.parquet ({posts:,} posts, {workers} worker(s))", repeats,
                   after_each=lambda: out.unlink(missing_ok=True))
    if hb:
        r["baseline_hakubooru_seconds"] = posts / hb["captions_per_s"]
        r["speedup_vs_hakubooru"] = r["baseline_hakubooru_seconds"] / r["seconds"]
        print(f"    = {r['speedup_vs_hakubooru']:.0f}x hakubooru whole-process ({r['baseline_hakubooru_seconds']:,.0f}s)")
    return r


# The parts of a short caption run that do not depend on how captions are laid out: starting
# Python with the libraries `kdata caption` imports, fetching and parsing every page, and
# encoding the output parquet (the same frame, the same writer settings); and the layout itself
# (caption_page over pages parsed beforehand). Each in a process of its own, CPU time included,
# so the 200k rows can be held against them: with perfect use of every core a run takes at
# least imports + (read + layout + write CPU) / cores.
_FLOOR_SCRIPT = """
import json, sys, time
mode, db, frame_path = sys.argv[1:4]
from kohaku_data.runtime import bulk_process
bulk_process()
import kohaku_data.cli, kohaku_data.cli.caption, kohaku_data.captions, kohaku_data.captions.output
import polars as pl
from kohaku_data.config import CAPTION_CHUNK_SIZE
from kohaku_data.captions.frame import parse_page
from kohaku_data.db.pages import PageFetcher
out = {}
if mode == "read":
    t, c = time.perf_counter(), time.process_time()
    with PageFetcher(db, None, CAPTION_CHUNK_SIZE, False) as pages:
        posts = sum(parse_page(p)[0].height for p in pages)
    out = {"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c, "posts": posts}
elif mode == "layout":  # the captioning itself: pages parsed and tags prepared beforehand
    from kohaku_data.captions import _tag_source, compute_thresholds
    from kohaku_data.captions.parallel import caption_page
    from kohaku_data.config import Recipe
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.pages import open_reader
    config = Recipe().caption
    with DanbooruDB.open(db, readonly=True) as handle, PageFetcher(db, None, CAPTION_CHUNK_SIZE, False) as pages:
        thresholds = compute_thresholds(handle, config)
        parsed = [parse_page(p) for p in pages if p.count]
        tags = _tag_source(open_reader(db), True, config)
        t, c = time.perf_counter(), time.process_time()
        posts = sum(caption_page(p, r, tags, config, thresholds).height for p, r in parsed)
    out = {"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c, "posts": posts}
elif mode == "write":
    frame = pl.read_ipc(frame_path)
    frames = [frame.slice(i, CAPTION_CHUNK_SIZE).rechunk() for i in range(0, frame.height, CAPTION_CHUNK_SIZE)]
    t, c = time.perf_counter(), time.process_time()
    pl.concat(frames, rechunk=False).lazy().sink_parquet(frame_path + ".parquet", compression_level=1,
                                                         row_group_size=CAPTION_CHUNK_SIZE)
    out = {"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c, "rows": frame.height}
print(json.dumps(out))
"""


def floor_rows(db: Path, out: Path) -> dict:
    """What a 200k caption run spends outside the caption layout (see _FLOOR_SCRIPT)."""
    r = run([*KDATA, "caption", "--db", str(db), "--out", str(out)], "kdata caption (for the output frame)")
    frame_path = out.with_suffix(".arrow")
    subprocess.run([sys.executable, "-c", f"import polars as pl; pl.read_parquet({str(out)!r}).write_ipc({str(frame_path)!r})"],
                   check=True)
    out.unlink(missing_ok=True)
    rows = {"imports": run([sys.executable, "-c", _FLOOR_SCRIPT, "imports", str(db), str(frame_path)],
                           "floor: Python + the imports of kdata caption")}
    for mode in ("read", "layout", "write"):
        proc = subprocess.run([sys.executable, "-c", _FLOOR_SCRIPT, mode, str(db), str(frame_path)],
                              capture_output=True, text=True, check=True)
        rows[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  floor: {mode} {rows[mode]['seconds']:.2f}s (CPU {rows[mode]['cpu_s']:.2f}s)", flush=True)
    for path in (frame_path, Path(str(frame_path) + ".parquet")):
        path.unlink(missing_ok=True)
    cores = os.cpu_count() or 1
    rows["bound_s"] = rows["imports"]["seconds"] + (rows["read"]["cpu_s"] + rows["write"]["cpu_s"]) / cores
    rows["caption_run_s"] = r["seconds"]
    rows["with_layout_s"] = rows["bound_s"] + rows["layout"]["cpu_s"] / cores
    print(f"  floor without any captioning: {rows['bound_s']:.2f}s = imports + (read + write CPU) / {cores} cores; "
          f"with the layout's CPU too: {rows['with_layout_s']:.2f}s", flush=True)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 600) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read()
    return time.perf_counter() - t0, body


def serve_rows(db: Path) -> dict:
    """A fresh `kdata serve` per request kind: the first /stats, then /posts?q= (first and warm)."""
    rows = {}
    for name, path in (("stats", "/stats"), ("posts", "/posts?q=long_hair%20order:score&limit=20")):
        port = _free_port()
        proc = subprocess.Popen([*KDATA, "serve", "--db", str(db), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t_start = time.perf_counter()
            while True:
                try:
                    _get(f"http://127.0.0.1:{port}/openapi.json", timeout=5)
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - t_start > 120:
                        raise SystemExit(f"kdata serve did not start on {db}")
                    time.sleep(0.1)
            ready = time.perf_counter() - t_start
            first, body = _get(f"http://127.0.0.1:{port}{path}")
            second, _ = _get(f"http://127.0.0.1:{port}{path}")
            rows[name] = {"path": path, "startup_s": ready, "first_s": first, "second_s": second,
                          "bytes": len(body)}
            print(f"  fresh kdata serve {path}: first {first:.3f}s, second {second:.3f}s (ready after {ready:.1f}s)",
                  flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=7_800_000)
    parser.add_argument("--build-only", action="store_true", help="make the cached DBs and stop")
    parser.add_argument("--no-hakubooru", action="store_true")
    parser.add_argument("--quick", action="store_true", help="(from make bench QUICK=1) same as --posts 300000")
    parser.add_argument("--rows", default="caption,small,query,info,serve,metatags",
                        help="which rows to run (comma list; small = the two 200k caption DBs)")
    args = parser.parse_args()
    want = set(args.rows.split(","))
    posts = 300_000 if args.quick and args.posts == 7_800_000 else args.posts
    cores = os.cpu_count() or 1
    results: dict = {"posts": posts, "cpu_count": cores, "rows": {}}
    print(f"scale benchmark at {posts:,} posts ({cores} cores)", flush=True)
    published, built = build_db(posts)
    results["rows"]["sample"] = built
    migrated, mig = migrated_db(published)
    results["rows"]["db migrate"] = mig
    smalls = {}  # label -> (migrated DB, build record): the sample's own tag table, and a 1M-row one
    for label, tail in (("200k", None), ("200k 1M tags", SMALL_TAIL)) if "small" in want else ():
        small, small_built = build_db(SMALL_POSTS, tail)
        smalls[label] = (migrated_db(small)[0], small_built)
    results["small_dbs"] = {label: built for label, (_, built) in smalls.items()}
    if args.build_only:
        write_results("scale" if posts == 7_800_000 else f"scale-{posts}", results)
        return
    python = None if args.no_hakubooru else ensure_hakubooru()
    hb = hakubooru_rate(python, migrated, 20_000) if "caption" in want else None
    hb_small = {label: hakubooru_rate(python, db, 10_000) for label, (db, _) in smalls.items()}
    results["baselines"] = {"hakubooru": hb, "hakubooru_small": hb_small}
    tmp = CACHE / "scale-captions.parquet"
    rows = results["rows"]
    if "caption" in want:
        rows["caption"] = caption_row(migrated, posts, tmp, hb, 1)
    if "caption" in want and cores > 1:
        rows[f"caption workers={cores}"] = caption_row(migrated, posts, tmp, hb, cores)
    for label, (db, _) in smalls.items():
        rows[f"caption {label}"] = caption_row(db, SMALL_POSTS, tmp, hb_small[label], 1, repeats=SMALL_REPEATS)
        if cores > 1:
            rows[f"caption {label} workers={cores}"] = caption_row(db, SMALL_POSTS, tmp, hb_small[label], cores)
    results["floors_200k"] = {label: floor_rows(db, tmp) for label, (db, _) in smalls.items()}
    if "metatags" in want:
        results["metatags"] = metatag_rows(migrated)
    if "query" in want:
        _query_row(rows, migrated)
    if "info" in want:
        _info_rows(rows, migrated)
    if "serve" in want:
        served = serve_rows(migrated)
        rows["/stats"] = {**served["stats"], "baseline": sql_time(migrated, STATS_SQL, "stats counts as plain SQL")}
        rows["/posts"] = {**served["posts"], "baseline": sql_time(migrated, POSTS_SQL, "/posts as plain SQL")}
    _print_table(results)
    # 7.8M (Danbooru2023's size) is the table of record; other sizes keep their own file.
    write_results("scale" if posts == 7_800_000 else f"scale-{posts}", results)


def _query_row(rows: dict, migrated: Path) -> None:
    rows["query --count"] = run_median([*KDATA, "query", QUERY, "--count", "--db", str(migrated)],
                                       "kdata query --count", repeats=3)
    rows["query --count"]["baseline"] = sql_time(migrated, QUERY_SQL, "query as plain SQL")


def _info_rows(rows: dict, migrated: Path) -> None:
    rows["db info"] = run([*KDATA, "db", "info", "--db", str(migrated)], "kdata db info")
    rows["db info"]["baseline"] = sql_time(migrated, STATS_SQL, "counts as plain SQL")
    rows["caption stats"] = run([*KDATA, "caption", "stats", "--db", str(migrated)], "kdata caption stats")
    rows["caption stats"]["baseline"] = sql_time(migrated, CAPTION_STATS_SQL, "rating/year groups as plain SQL")


# Issue 20: counts of the metatags added with Danbooru's full set, in-process (first call of a
# fresh handle, then warm), beside the plain SQL COUNT of the same WHERE on the same file.
METATAGS = ["filesize:>1mb", "upvotes:>5", "has:source", "pixiv_id:>50000000", "is:parent",
            "parent:any", "age:<10y", "is:sfw is:png", "source:https://i.pximg.net/*",
            "source:https://*pixiv*"]


def metatag_rows(db: Path) -> dict:
    sys.path.insert(0, str(ROOT.parent))
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.query import count_posts
    from kohaku_data.db.query_plan import make_plan, tree_sql
    out = {}
    with DanbooruDB.open(db, readonly=True) as handle:
        for text in METATAGS:
            t0 = time.perf_counter()
            n = count_posts(handle, text)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            count_posts(handle, text)
            warm = time.perf_counter() - t0
            where, params = tree_sql(make_plan(handle, text).tree)
            t0 = time.perf_counter()
            m = handle.connection().execute(f"SELECT count(*) FROM post WHERE {where}", params).fetchone()[0]
            base = time.perf_counter() - t0
            assert n == m, (text, n, m)
            out[text] = {"matches": n, "first_s": first, "warm_s": warm, "baseline_sql_count_s": base,
                         "speedup_warm": base / warm, "speedup_first": base / first}
            print(f"  count {text!r}: {n:,} first {first * 1000:.1f} ms, warm {warm * 1000:.1f} ms | plain SQL "
                  f"COUNT {base:.2f}s (x{base / warm:,.0f} warm, x{base / first:,.0f} first)", flush=True)
    return out


def _print_table(results: dict) -> None:
    rows = results["rows"]
    print(f"\n{'command':<30} {'figure':>10} {'CPU':>8} {'peak anon':>10}  baseline (same run) | issue: before -> target")
    for name, r in rows.items():
        figure = r.get("seconds", r.get("first_s"))
        peak = r.get("peak_anon_bytes")
        base = r.get("baseline", {}).get("seconds") if isinstance(r.get("baseline"), dict) else None
        extra = (f"hakubooru {r['baseline_hakubooru_seconds']:,.0f}s = {r['speedup_vs_hakubooru']:.0f}x"
                 if "speedup_vs_hakubooru" in r else (f"plain SQL {base:.2f}s" if base is not None else ""))
        if "size_ratio" in r:
            extra = f"file {r['bytes_before'] / 2**30:.1f} -> {r['bytes_after'] / 2**30:.1f} GiB ({r['size_ratio']:.2f}x)"
        peak_s = f"{peak / 2**30:.2f} GiB" if peak else "-"
        before, target = ISSUE.get(name.split(" workers=")[0], ("", ""))
        r["issue"] = {"before": before, "target": target}
        cpu = f"{r['cpu_s']:.1f}s" if "cpu_s" in r else "-"
        print(f"{name:<30} {figure:>9.2f}s {cpu:>8} {peak_s:>10}  {extra} | {before} -> {target}")
    hb_small = (results.get("baselines") or {}).get("hakubooru_small") or {}
    for label, floor in results.get("floors_200k", {}).items():
        budget = f", 100x hakubooru needs <= {SMALL_POSTS / hb_small[label]['captions_per_s'] / 100:.2f}s" if hb_small.get(label) else ""
        print(f"floor of caption {label} without captioning: {floor['bound_s']:.2f}s (imports "
              f"{floor['imports']['seconds']:.2f}s + (read {floor['read']['cpu_s']:.2f}s + parquet "
              f"{floor['write']['cpu_s']:.2f}s CPU) / cores); + layout {floor['layout']['cpu_s']:.2f}s CPU / cores = "
              f"{floor['with_layout_s']:.2f}s{budget}")


if __name__ == "__main__":
    main()
