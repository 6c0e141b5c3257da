"""Benchmark: the trainer's reader opening a manifest in a bucket (train/ranges.RangeFiles.read_parquet).

    .venv/bin/python benchmarks/bench_manifest_read.py [--rows N] [--quick]

A manifest-shaped parquet of N rows (default 1M; the reader's index columns plus a ~330-byte
caption, 100k-row groups: what 1M samples' manifest holds, captions most of its bytes) in moto's
S3 server on loopback, behind a proxy that adds 25 ms before every answer (first-byte latency),
paces each answer to a bandwidth (unlimited: loopback; 100 MB/s: about one S3 GET stream) and
counts bytes. In the same run, the reader's columns (key, shard, offsets, sizes, bucket,
sha256) read:
- now: pyarrow through an uncached fsspec file, only those column chunks by coalesced ranges;
- baseline: the previous code, polars reading the fsspec file object (it reads the file whole).
Best of 3 each, wall seconds and bytes fetched. Results: benchmarks/results/manifest_read.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.report import write_results  # noqa: E402

LATENCY_S = 0.025
BANDWIDTHS = (None, 100e6)  # bytes/s of one request's answer: loopback, and ~one S3 GET stream
COLUMNS = ["key", "shard", "image_offset", "image_size", "txt_offset", "txt_size", "bucket", "sha256"]


def manifest(path: Path, rows: int) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    tags = np.array([f"tag_{i}" for i in range(50_000)])
    frame = pl.DataFrame({
        "key": np.arange(rows), "shard": [f"kxl-{i // 2000:06d}.tar" for i in range(rows)],
        "image_offset": rng.integers(0, 1 << 30, rows), "image_size": rng.integers(0, 1 << 21, rows),
        "txt_offset": rng.integers(0, 1 << 30, rows), "txt_size": rng.integers(0, 1 << 10, rows),
        "bucket": rng.choice(["1024x1024", "832x1216", "1216x832"], rows),
        "sha256": [f"{a:016x}{b:016x}" * 2 for a, b in rng.integers(0, 1 << 62, (rows, 2))],
        "caption": [" ".join(tags[rng.integers(0, len(tags), 35)]) for _ in range(rows)],
    })
    frame.write_parquet(path, row_group_size=100_000)


def fetched_bytes(proxy) -> int:
    spans = [r.range.split("=")[1].split("-") for r in proxy.log if r.method == "GET" and r.range]
    return sum(int(b) - int(a) + 1 for a, b in spans)


def timed(proxy, read) -> tuple[float, int]:
    best, fetched = float("inf"), 0
    for _ in range(3):
        proxy.log.clear()
        start = time.perf_counter()
        read()
        best, fetched = min(best, time.perf_counter() - start), fetched_bytes(proxy)
    return best, fetched


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="make bench QUICK=1: 200k rows")
    args = parser.parse_args()
    rows = min(args.rows, 200_000) if args.quick else args.rows
    import polars as pl
    import s3fs
    from s3_support import FaultProxy, S3Server, endpoint_environ

    from kohaku_data import storage
    from kohaku_data.train.ranges import RangeFiles

    server = S3Server.start()
    proxy = FaultProxy.start(server.url)
    try:
        with endpoint_environ(proxy.url), tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.parquet"
            manifest(path, rows)
            fs = s3fs.S3FileSystem()
            fs.mkdir("bench")
            fs.put_file(str(path), "bench/ds/manifest.parquet")
            url = "s3://bench/ds"
            proxy.stall_next(1 << 40, LATENCY_S)

            def baseline() -> pl.DataFrame:
                fs_, key = storage.url_to_fs(f"{url}/manifest.parquet")
                with fs_.open(key, "rb") as f:
                    return pl.read_parquet(f, columns=COLUMNS)

            rows_out = []
            for bandwidth in BANDWIDTHS:
                proxy.bytes_per_s = bandwidth
                now_s, now_bytes = timed(proxy, lambda: RangeFiles(url).read_parquet("manifest.parquet", COLUMNS))
                base_s, base_bytes = timed(proxy, baseline)
                rows_out.append({"bytes_per_s": bandwidth, "ranged_s": round(now_s, 3), "ranged_bytes": now_bytes,
                                 "whole_s": round(base_s, 3), "whole_bytes": base_bytes,
                                 "ratio_time": round(base_s / now_s, 2)})
            same = RangeFiles(url).read_parquet("manifest.parquet", COLUMNS).equals(baseline())
            size = path.stat().st_size
    finally:
        proxy.stop()
        server.stop()
    print(f"{rows:,}-row manifest, {size / 1e6:.1f} MB, +{LATENCY_S * 1e3:.0f} ms a request; same frame: {same}")
    for r in rows_out:
        rate = "loopback" if r["bytes_per_s"] is None else f"{r['bytes_per_s'] / 1e6:.0f} MB/s a request"
        print(f"  {rate}: reader's columns {r['ranged_s']:.2f} s, {r['ranged_bytes'] / 1e6:.1f} MB fetched vs "
              f"whole-file read {r['whole_s']:.2f} s, {r['whole_bytes'] / 1e6:.1f} MB ({r['ratio_time']:.2f}x time)")
    write_results("manifest_read", {"rows": rows, "file_bytes": size, "latency_s": LATENCY_S, "columns": COLUMNS,
                                    "runs": rows_out, "same_frame": same})


if __name__ == "__main__":
    main()
