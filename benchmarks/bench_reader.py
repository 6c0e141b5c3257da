"""Benchmark: the kohaku_data.train reader (issue 12).

    .venv/bin/python benchmarks/bench_reader.py [--quick] [--images N] [--rows N]

1. Samples/s decoded to uint8 CHW tensors, on the shards of a real build of N images (default
   1000; --quick 200; demo-256 buckets, so per-sample overhead weighs more than with 1024 px
   images), for num_workers 0 and 2:
   - kdata: `KdataDataset(decode="torch")` + `BucketBatchSampler` (batch 16) + `BucketCollate`
     in a torch DataLoader: one byte-range read per sample, batches stacked per bucket;
   - baseline: webdataset's own loader on the same tars, in the same run:
     `WebDataset(urls).decode("torchrgb8")` in a `WebLoader` (sequential tar reads, batches of
     16 as lists: webdataset cannot stack mixed buckets). Target: kdata not slower.
   Each figure is the best of 3 passes (2 with --quick), kdata and webdataset alternating, after
   a warm-up pass of each (workers started, page cache hot for both).
2. Time to first batch on a synthetic manifest of R rows (default 1,000,000; --quick 200,000):
   open the dataset (index columns of manifest.parquet), build the plan, take rank 3 of 8's first
   batch; for epoch 0, epoch 5 (carry reaches back into epoch 4) and with a weight column.
   Baseline in the same run: a plain-Python bucketing of the same rows (dict of lists + shuffle
   per bucket, as hand-written samplers do). Target ≤ 2 s.

Results go to benchmarks/results/reader.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "reader"
BATCH = 16


def built_dataset(n: int) -> Path:
    """A real build of n generated images (cached between runs)."""
    from benchmarks.bench_build import RECIPE, make_sample
    from kohaku_data.assembly import build_dataset
    from kohaku_data.db import DanbooruDB

    out = CACHE / f"ds{n}"
    if (out / "dataset.lock").exists() and "image_offset" in pl.read_parquet_schema(out / "manifest.parquet"):
        return out
    db, src = make_sample(n)
    shutil.rmtree(out, ignore_errors=True)
    recipe = RECIPE.model_copy(update={"shard_max_bytes": 2_000_000})  # enough shards for 2 workers
    with DanbooruDB.open(db, readonly=True) as handle:
        build_dataset(src, out, recipe, handle, workers=2)
    return out


def kdata_loader(path: Path, workers: int):
    from torch.utils.data import DataLoader

    from kohaku_data.train import BucketBatchSampler, BucketCollate, KdataDataset

    ds = KdataDataset(path, decode="torch")
    return DataLoader(ds, batch_sampler=BucketBatchSampler(ds, BATCH, remainder="pad"), num_workers=workers,
                      collate_fn=BucketCollate(), persistent_workers=workers > 0)


def webdataset_loader(path: Path, workers: int):
    import webdataset as wds

    urls = [str(path / s["url"]) for s in json.loads((path / "index.json").read_text())["shardlist"]]
    pipeline = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("torchrgb8")
                .to_tuple("__key__", "webp;png", "txt", "json").batched(BATCH, collation_fn=list, partial=True))
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def rates(path: Path, workers: int, rounds: int) -> tuple[float, float]:
    """Best samples/s of kdata and of webdataset over `rounds` alternating passes (the machine's
    load then hits both alike), after one warm-up pass each (workers up, page cache hot)."""
    loaders = [(kdata_loader(path, workers), lambda b: b["image"].shape[0]), (webdataset_loader(path, workers), len)]
    best = [0.0, 0.0]
    for round_ in range(rounds + 1):
        for k, (loader, count) in enumerate(loaders):
            start, n = time.perf_counter(), 0
            for batch in loader:
                n += count(batch)
            if round_:  # round 0 is the warm-up
                best[k] = max(best[k], n / (time.perf_counter() - start))
    return best[0], best[1]


# -- time to first batch -------------------------------------------------------------------------
BUCKETS = [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768),
           (704, 1408), (1408, 704), (640, 1536), (1536, 640), (960, 1088), (1088, 960), (576, 1664)]


def synthetic_manifest(rows: int) -> Path:
    """A manifest.parquet with every column the reader indexes, plus captions (real file size)."""
    path = CACHE / f"manifest{rows}" / "manifest.parquet"
    if path.exists():
        return path.parent
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, len(BUCKETS) + 1) ** 1.2
    which = rng.choice(len(BUCKETS), rows, p=p / p.sum())
    w = np.array([b[0] for b in BUCKETS])[which]
    h = np.array([b[1] for b in BUCKETS])[which]
    size = rng.integers(200_000, 2_000_000, rows)
    per_shard = 1000
    offset = np.cumsum(np.concatenate([[0], size[:-1] + 3 * 1536])) % (per_shard * 2_000_000)
    frame = pl.DataFrame({
        "key": np.arange(rows) * 7 + 1000, "shard": [f"ds-{i // per_shard:06d}.tar" for i in range(rows)],
        "bucket": [f"{a}x{b}" for a, b in zip(w.tolist(), h.tolist())],
        "width": w.astype(np.int32), "height": h.astype(np.int32),
        "crop_left": np.zeros(rows, np.int32), "crop_top": rng.integers(0, 40, rows).astype(np.int32),
        "source_width": (w * 1.7).astype(np.int32), "source_height": (h * 1.8).astype(np.int32),
        "image_offset": offset + 512, "image_size": size, "txt_offset": offset + size + 1536,
        "txt_size": np.full(rows, 300), "json_offset": offset + size + 2560, "json_size": np.full(rows, 900),
        "weight": rng.uniform(0.2, 2.0, rows),
    }).with_columns(caption=pl.concat_str([pl.lit("1girl, solo, |||long hair, tag_"), pl.col("key").cast(pl.String),
                                           pl.lit(", smile, highres, " * 12)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, compression="zstd")
    return path.parent


def first_batch_s(folder: Path, epoch: int, weights: str | None) -> float:
    from kohaku_data.train import BucketBatchSampler, KdataDataset

    start = time.perf_counter()
    ds = KdataDataset(folder, decode="bytes")
    sampler = BucketBatchSampler(ds, 8, world_size=8, rank=3, seed=0, weights=weights)
    sampler.set_epoch(epoch)
    next(iter(sampler))
    return time.perf_counter() - start


def python_bucketing_s(folder: Path) -> float:
    """The baseline: read the bucket column, group indices in a dict of lists, shuffle each."""
    start = time.perf_counter()
    buckets = pl.read_parquet(folder / "manifest.parquet", columns=["bucket"])["bucket"].to_list()
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(buckets):
        groups.setdefault(b, []).append(i)
    rng = random.Random(0)
    batches = []
    for b in sorted(groups):
        idx = groups[b]
        rng.shuffle(idx)
        batches += [idx[j:j + 64] for j in range(0, len(idx) - 63, 64)]
    rng.shuffle(batches)
    _ = batches[0][24:32]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    n = args.images or (200 if args.quick else 1000)
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    path = built_dataset(n)
    samples = pl.read_parquet(path / "manifest.parquet", columns=["key"]).height
    measured = {workers: rates(path, workers, rounds=2 if args.quick else 3) for workers in (0, 2)}
    folder = synthetic_manifest(rows)
    ttfb = {"epoch0": first_batch_s(folder, 0, None), "epoch5": first_batch_s(folder, 5, None),
            "weighted_epoch5": first_batch_s(folder, 5, "weight")}
    baseline = python_bucketing_s(folder)
    print(f"reader, {samples} samples of a real build (demo-256), decode to uint8 CHW tensors, batch {BATCH}:")
    for workers, (ours, theirs) in measured.items():
        print(f"  num_workers={workers}: kdata {ours:8.1f} samples/s   webdataset {theirs:8.1f} samples/s "
              f"(baseline)   ratio x{ours / theirs:.2f} (target >= 1)")
    print(f"time to first batch, {rows:,} rows (rank 3 of 8, batch 8):")
    for name, seconds in ttfb.items():
        print(f"  {name:16s}: {seconds:6.3f} s (target <= 2 s)")
    print(f"  plain-Python bucketing of the same rows (baseline): {baseline:6.3f} s "
          f"(x{baseline / ttfb['epoch0']:.1f} the reader's epoch 0)")
    write_results("reader", {
        "samples": samples, "batch": BATCH, "rows": rows,
        "kdata_samples_per_s": {str(w): round(r[0], 1) for w, r in measured.items()},
        "webdataset_samples_per_s": {str(w): round(r[1], 1) for w, r in measured.items()},
        "ratio_vs_webdataset": {str(w): round(r[0] / r[1], 3) for w, r in measured.items()},
        "first_batch_s": {k: round(v, 3) for k, v in ttfb.items()},
        "python_bucketing_s": round(baseline, 3),
    })


if __name__ == "__main__":
    main()
