"""Throughput and latency of `kdata serve` beside the same work done directly in Python.

    .venv/bin/python benchmarks/bench_serve.py [--quick] [--clients 16] [--seconds 8]

A sample DB (1M posts; --quick: 100k) is written once to benchmarks/.cache/. A real
`kdata serve` process is started on a free port and driven by concurrent httpx async clients
for `/posts?q=` (a mix of tag queries) and `/posts/{id}`. The baseline is the same call
through the Python API in this process (`query_ids` + row fetch; post + tags), sequentially.
Results: benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from benchmarks.report import write_results  # noqa: E402

from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.db.migrate import migrate  # noqa: E402
from kohaku_data.keepers import SUMMARY_KEEPERS  # noqa: E402
from kohaku_data.db.query import query_ids  # noqa: E402
from kohaku_data.sample.metadata import write_sample_db  # noqa: E402


def sample_db(posts: int) -> Path:
    """A migrated sample DB (as `kdata serve` is meant to run: after `kdata db migrate`)."""
    path = ROOT / ".cache" / f"serve-{posts}-migrated.db"
    if not path.exists():
        print(f"writing a {posts:,}-post sample DB to {path} (once) ...", flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        write_sample_db(tmp, posts, seed=0)
        with DanbooruDB.open(tmp) as db:
            migrate(db, keepers=SUMMARY_KEEPERS)
        tmp.rename(path)
    return path


def pick_workload(db: DanbooruDB, rng: random.Random) -> tuple[list[str], list[int]]:
    conn = db.connection()
    general = [r[0] for r in conn.execute(
        "SELECT name FROM tag WHERE type = 0 ORDER BY popularity DESC LIMIT 40")]
    mid = general[10:40]
    queries = [general[0], f"{general[1]} {rng.choice(mid)}", f"{rng.choice(mid)} -{general[2]}",
               f"{rng.choice(mid)} rating:g", f"{general[3]} score:>5", rng.choice(mid)]
    max_id = conn.execute("SELECT max(id) FROM post").fetchone()[0]
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM post WHERE id IN (%s)" % ",".join(str(rng.randint(1, max_id)) for _ in range(3000)))]
    return queries, ids[:1000]


def direct(db: DanbooruDB, queries: list[str], ids: list[int], seconds: float) -> dict[str, dict]:
    """The same work through the Python API, one call at a time."""
    from kohaku_data.service.app import _post_rows, _post_tags

    def posts_q(i: int) -> None:
        _post_rows(db, query_ids(db, queries[i % len(queries)], limit=51)[:50])

    def post_id(i: int) -> None:
        pid = ids[i % len(ids)]
        db.Post.select().where(db.Post.id == pid).dicts().first()
        _post_tags(db, pid)

    return {name: _run_sync(fn, seconds) for name, fn in (("posts_q", posts_q), ("post_id", post_id))}


def _run_sync(fn, seconds: float) -> dict:
    lat, i, end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
        i += 1
    return _summary(lat, seconds, clients=1)


async def http(url: str, queries: list[str], ids: list[int], clients: int, seconds: float) -> dict[str, dict]:
    paths = {
        "posts_q": [f"/posts?q={httpx.QueryParams({'q': q})['q']}&limit=50" for q in queries],
        "post_id": [f"/posts/{i}" for i in ids],
    }
    out = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for name, urls in paths.items():
            await client.get(urls[0])  # warm up (threads, connections)
            lat: list[float] = []
            end = time.perf_counter() + seconds

            async def worker(k: int) -> None:
                i = k
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    res = await client.get(urls[i % len(urls)])
                    res.raise_for_status()
                    lat.append(time.perf_counter() - t)
                    i += clients

            start = time.perf_counter()
            await asyncio.gather(*(worker(k) for k in range(clients)))
            out[name] = _summary(lat, time.perf_counter() - start, clients)
    return out


def _summary(lat: list[float], elapsed: float, clients: int) -> dict:
    lat = sorted(lat)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {"requests": len(lat), "per_s": len(lat) / elapsed, "p50_ms": q[49] * 1000,
            "p99_ms": q[98] * 1000, "clients": clients}


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "serve", "--db", str(db),
           "--datasets", str(ROOT / ".cache" / "no-datasets"), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/openapi.json", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                raise SystemExit(f"server failed: {proc.stderr.read().decode()}")
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k posts, short runs (< 1 minute)")
    ap.add_argument("--posts", type=int, default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    posts = args.posts or (100_000 if args.quick else 1_000_000)
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    path = sample_db(posts)
    rng = random.Random(0)
    with DanbooruDB.open(path, readonly=True) as db:
        queries, ids = pick_workload(db, rng)
        base = direct(db, queries, ids, seconds)
    proc, url = start_server(path)
    try:
        served = asyncio.run(http(url, queries, ids, args.clients, seconds))
    finally:
        proc.terminate()
        proc.wait(10)
    results = {"posts": posts, "clients": args.clients, "seconds": seconds, "queries": queries,
               "machine": {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0))},
               "endpoints": {}}
    for name in ("posts_q", "post_id"):
        h, d = served[name], base[name]
        ratio = h["per_s"] / d["per_s"]
        results["endpoints"][name] = {"http": h, "direct": d, "http_over_direct_throughput": ratio}
        print(f"{name:8s} HTTP {h['per_s']:8.1f} req/s  p50 {h['p50_ms']:7.2f} ms  p99 {h['p99_ms']:7.2f} ms "
              f"({args.clients} clients) | direct {d['per_s']:8.1f} calls/s  p50 {d['p50_ms']:6.2f} ms "
              f"| throughput ratio {ratio:.2f}x")
    write_results("serve", results)


if __name__ == "__main__":
    main()
