"""Benchmark: shard-local streaming from object storage (issue 24).

    .venv/bin/python benchmarks/bench_stream.py [--images N] [--per-sample N]

A real build of N images (default 3000; demo-256 buckets, shard_max_bytes 1 MB: tens of shards;
built once into benchmarks/.cache/stream/) is uploaded to moto's S3 server on loopback, read
through a proxy that adds 25 ms before every answer (first-byte latency) and counts requests.
In the same run:
- today's reader: `KdataDataset(url)`, one ranged GET per sample, for the first `--per-sample`
  entries of the plan (default 200), samples/s;
- streaming: the same dataset with `cache=ShardCache(limit = window + 4 shards)` and
  `BucketBatchSampler(window=2 and 8)` and a `Prefetcher`: one whole epoch, samples/s, GET requests
  for shards per epoch (target <= 2x the shard count), the cache's peak bytes (polled every 10
  ms, target <= limit), and an exact resume check (state after 1/3 of the epoch, the rest equal).
Both read raw bytes (decode="bytes"): this measures fetching, not decoding. Results go to
benchmarks/results/stream.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.report import write_results  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "stream"
LATENCY_S = 0.025
BATCH = 8


def built_dataset(n: int) -> Path:
    """A real build of n generated images, tiny shards (cached between runs)."""
    from benchmarks.bench_build import RECIPE, make_sample
    from kohaku_data.assembly import build_dataset
    from kohaku_data.db import DanbooruDB

    out = CACHE / f"ds{n}"
    if (out / "dataset.lock").exists():
        return out
    db, src = make_sample(n, root=CACHE / f"n{n}")
    shutil.rmtree(out, ignore_errors=True)
    with DanbooruDB.open(db, readonly=True) as handle:
        build_dataset(src, out, RECIPE.model_copy(update={"shard_max_bytes": 1_000_000}), handle, workers=1)
    return out


def upload(local: Path) -> str:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    for path in sorted(local.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            fs.pipe_file(f"bench/ds/{path.name}", path.read_bytes())
    return "s3://bench/ds"


def tar_gets(proxy) -> int:
    return sum(1 for r in proxy.log if r.method == "GET" and r.path.split("?")[0].endswith(".tar"))


def per_sample(url: str, proxy, count: int) -> dict:
    from kohaku_data.train import BucketBatchSampler, KdataDataset

    ds = KdataDataset(url, decode="bytes")
    order = [i for batch in BucketBatchSampler(ds, BATCH, seed=0, remainder="pad") for i in batch][:count]
    proxy.log.clear()
    start = time.perf_counter()
    for i in order:
        ds.read_members(i)
    seconds = time.perf_counter() - start
    return {"samples": len(order), "seconds": seconds, "samples_per_s": len(order) / seconds,
            "tar_gets": tar_gets(proxy)}


def streaming(url: str, proxy, work: Path, window: int) -> dict:
    from kohaku_data.train import BucketBatchSampler, KdataDataset, Prefetcher, ShardCache

    probe = ShardCache(url, work / "probe", limit_bytes=1 << 40)
    limit = (window + 4) * max(e.size for e in probe.entries.values())  # a window, the next one's start
    cache = ShardCache(url, work / "cache", limit_bytes=limit)
    ds = KdataDataset(url, decode="bytes", cache=cache)
    sampler = BucketBatchSampler(ds, BATCH, seed=0, remainder="pad", window=window)
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], cache.used_bytes())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    done, keys, state = [0], [], None
    proxy.log.clear()
    start = time.perf_counter()
    prefetcher = Prefetcher(cache, sampler.shard_schedule(0), lambda: done[0]).start()
    third = len(sampler) // 3
    for batch in sampler:
        keys.append([int(ds.read_members(i) is not None and ds._cols["key"][i]) for i in batch])
        done[0] += 1
        if done[0] == third:
            state = sampler.state_dict()
    seconds = time.perf_counter() - start
    prefetcher.stop()
    stop.set()
    watcher.join()
    gets = tar_gets(proxy)
    resumed = BucketBatchSampler(ds, BATCH, seed=0, remainder="pad", window=window)
    resumed.load_state_dict(state)
    exact = [[int(ds._cols["key"][i]) for i in b] for b in resumed] == keys[third:]
    samples = sum(len(k) for k in keys)
    return {"window": window, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "shards": len(cache.entries), "tar_gets": gets, "gets_per_shard": gets / len(cache.entries),
            "cache_limit_bytes": limit, "cache_peak_bytes": peak[0], "resume_exact": exact,
            "prefetch_error": repr(prefetcher.error) if prefetcher.error else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--per-sample", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="make bench QUICK=1: 600 images, 60 per-sample reads")
    args = parser.parse_args()
    if args.quick:
        args.images, args.per_sample = min(args.images, 600), min(args.per_sample, 60)
    from s3_support import FaultProxy, S3Server, endpoint_environ

    local = built_dataset(args.images)
    server = S3Server.start()
    proxy = FaultProxy.start(server.url)
    try:
        with endpoint_environ(proxy.url), tempfile.TemporaryDirectory() as tmp:
            url = upload(local)
            proxy.stall_next(1 << 40, LATENCY_S)  # every request from here on: +25 ms first byte
            base = per_sample(url, proxy, args.per_sample)
            runs = [streaming(url, proxy, Path(tmp) / f"w{w}", w) for w in (2, 8)]
    finally:
        proxy.stop()
        server.stop()
    print(f"per-sample reads: {base['samples_per_s']:.1f} samples/s ({base['tar_gets']} GETs for {base['samples']} samples)")
    for r in runs:
        print(f"window={r['window']}: {r['samples_per_s']:.1f} samples/s ({r['samples_per_s'] / base['samples_per_s']:.1f}x), "
              f"{r['tar_gets']} shard GETs for {r['shards']} shards ({r['gets_per_shard']:.2f}/shard), "
              f"cache peak {r['cache_peak_bytes']} <= limit {r['cache_limit_bytes']}: "
              f"{r['cache_peak_bytes'] <= r['cache_limit_bytes']}, resume exact: {r['resume_exact']}")
    write_results("stream", {"images": args.images, "latency_s": LATENCY_S, "batch": BATCH,
                             "per_sample": base, "streaming": runs})


if __name__ == "__main__":
    main()
