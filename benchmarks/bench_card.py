"""Benchmark: the dataset card (written by every build) and `kdata diff` (issue 14).

    .venv/bin/python benchmarks/bench_card.py [--quick] [--samples N]

1. On a real build (`kdata sample` 300 posts, demo recipe, one worker): the build's seconds
   (card included) beside `write_card` alone on the same folder, in the same run → the card's
   share of the build.
2. At scale, on a dataset folder of N samples (default 200,000; --quick 20,000) laid out as a
   build lays it out: manifest.parquet in the build's schema, every sample's `.json` member in
   real tars at the offsets the manifest records (no image members: the card never reads one),
   rejects, index, stats and the real lock of step 1. Card seconds split into facts (polars +
   json reads) and pictures, beside reading the manifest alone.
3. `diff_datasets` of that folder against a copy whose manifest has 10 % of the captions changed
   and 1 % of the samples removed, beside reading the two manifests.

Results go to benchmarks/results/card.json. Figures on a shared machine are noisy; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402
from kohaku_data.assembly import build_dataset  # noqa: E402
from kohaku_data.assembly.card import write_card  # noqa: E402
from kohaku_data.assembly.card_data import card_facts  # noqa: E402
from kohaku_data.assembly.card_plots import render_plots  # noqa: E402
from kohaku_data.assembly.diff import diff_datasets  # noqa: E402
from kohaku_data.assembly.manifest import MANIFEST_SCHEMA  # noqa: E402
from kohaku_data.assembly.shards import ShardWriter, member_bytes  # noqa: E402
from kohaku_data.config import load_recipe  # noqa: E402
from kohaku_data.db import DanbooruDB  # noqa: E402

PER_SHARD = 50_000
QUALITY = ("masterpiece", "best quality", "great quality", "good quality", "normal quality", "low quality",
           "worst quality")
YEARS = ("newest", "recent", "mid", "early", "old")
BUCKETS = ("832x1216", "896x1152", "1024x1024", "1152x896", "1216x832", "768x1344", "1344x768")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def real_build(work: Path) -> tuple[Path, float, float]:
    kdata = [sys.executable, "-c", "from kohaku_data.cli import app; app()"]
    subprocess.run([*kdata, "sample", str(work / "s"), "--posts", "300", "--seed", "0", "--migrate"],
                   check=True, capture_output=True)
    recipe = load_recipe(ROOT / "pipelines" / "demo.toml")
    out = work / "build"
    with DanbooruDB.open(work / "s" / "danbooru.db", readonly=True) as db:
        build_s, _ = timed(lambda: build_dataset(work / "s" / "raw", out, recipe, db, workers=1))
    lock = json.loads((out / "dataset.lock").read_text())
    write_card(out, lock)  # warm: matplotlib's font cache and imports are a one-off
    card_s, _ = timed(lambda: write_card(out, lock))
    return out, build_s, card_s


def synthetic(folder: Path, n: int, lock: dict) -> None:
    """A folder of n samples in the build's layout (json members only, at recorded offsets)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    tags = np.array([f"tag_{i}" for i in range(5000)])
    keys = np.arange(1, n + 1)
    shards, offsets, sizes, names = [], [], [], []
    for s in range(0, n, PER_SHARD):
        name = f"bench-{s // PER_SHARD:06d}.tar"
        writer, pos = ShardWriter(folder / name), 0
        for key in keys[s:s + PER_SHARD]:
            picked = tags[rng.zipf(1.3, 25) % 5000]
            doc = json.dumps({"id": int(key), "tags": {"general": picked.tolist(), "artist": [f"artist_{key % 997}"],
                              "character": [], "copyright": ["original"], "meta": ["highres"]}}).encode()
            writer.add(f"{key}.json", doc)
            offsets.append(pos + 512)
            sizes.append(len(doc))
            names.append(name)
            pos += member_bytes(len(doc))
        info = writer.commit()
        shards.append({"url": info.url, "nsamples": min(PER_SHARD, n - s), "filesize": info.filesize,
                       "sha256": info.sha256})
    year = rng.integers(2005, 2025, n)
    columns = {
        "key": keys, "shard": names, "image": [f"{k}.webp" for k in keys], "format": "webp",
        "bucket": rng.choice(BUCKETS, n), "sha256": [f"{k:064x}" for k in keys],
        "caption": [f"1girl, tag_{k % 5000}, masterpiece" for k in keys],
        "rating": rng.choice(("general", "sensitive", "questionable", "explicit"), n),
        "quality": rng.choice(QUALITY, n), "year": rng.choice(YEARS, n),
        "score": rng.zipf(1.5, n) - 1, "fav_count": rng.zipf(1.4, n) - 1,
        "created_at": [f"{y}-06-01T00:00:00.000-04:00" for y in year],
        "json_offset": offsets, "json_size": sizes, "image_bytes": rng.integers(10**5, 10**6, n),
    }
    frame = pl.DataFrame({c: columns.get(c) for c in MANIFEST_SCHEMA if c in columns})
    full = pl.DataFrame(schema=MANIFEST_SCHEMA).vstack(
        frame.select([pl.col(c).cast(MANIFEST_SCHEMA[c]) if c in frame.columns else pl.lit(None, MANIFEST_SCHEMA[c]).alias(c)
                      for c in MANIFEST_SCHEMA]))
    full.write_parquet(folder / "manifest.parquet")
    pl.DataFrame({"key": [1], "source": ["1.png"], "reason": ["too_small"], "detail": ["tiny"]}).write_parquet(
        folder / "rejects.parquet")
    (folder / "index.json").write_text(json.dumps({"name": "bench", "shardlist": shards}))
    (folder / "stats.json").write_text(json.dumps({"samples": n, "bytes": sum(s["filesize"] for s in shards),
                                                   "image_bytes": 0, "rejects": {"too_small": 1}}))
    (folder / "dataset.lock").write_text(json.dumps(lock))


def changed_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    m = pl.read_parquet(src / "manifest.parquet")
    m = m.filter(pl.col("key") % 100 != 7).with_columns(
        caption=pl.when(pl.col("key") % 10 == 3).then(pl.col("caption") + ", new").otherwise(pl.col("caption")))
    m.write_parquet(dst / "manifest.parquet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int)
    args = parser.parse_args()
    n = args.samples or (20_000 if args.quick else 200_000)
    with tempfile.TemporaryDirectory(prefix="bench-card-") as tmp:
        work = Path(tmp)
        out, build_s, card_s = real_build(work)
        print(f"real build, 300 posts: build {build_s:.2f} s (card included), card alone {card_s:.2f} s "
              f"= {100 * card_s / build_s:.0f} % of the build")
        lock = json.loads((out / "dataset.lock").read_text())
        big = work / "big"
        synthetic(big, n, lock)
        read_s, _ = timed(lambda: pl.read_parquet(big / "manifest.parquet"))
        facts_s, facts = timed(lambda: card_facts(big, lock))
        plots_s, _ = timed(lambda: render_plots(facts))
        whole_s, _ = timed(lambda: write_card(big, lock))
        print(f"{n:,} samples: card {whole_s:.2f} s (facts {facts_s:.2f} s incl. every json read, pictures "
              f"{plots_s:.2f} s); baseline: read the manifest alone {read_s:.3f} s")
        other = work / "other"
        changed_copy(big, other)
        both_s, _ = timed(lambda: (pl.read_parquet(big / "manifest.parquet"), pl.read_parquet(other / "manifest.parquet")))
        diff_s, report = timed(lambda: diff_datasets(big, other))
        print(f"diff of {n:,} vs {report['samples']['b']:,} samples: {diff_s:.2f} s ({report['summary']}); "
              f"baseline: read both manifests {both_s:.3f} s = {diff_s / both_s:.1f}x")
    write_results("card", {
        "real_build": {"posts": 300, "build_s": build_s, "card_s": card_s, "card_share": card_s / build_s},
        "scale": {"samples": n, "card_s": whole_s, "facts_s": facts_s, "pictures_s": plots_s,
                  "read_manifest_s": read_s},
        "diff": {"samples": n, "diff_s": diff_s, "read_both_manifests_s": both_s, "ratio": diff_s / both_s,
                 "summary": report["summary"]},
        "note": "shared 2-core machine: noisy; compare the figures of one run",
    })


if __name__ == "__main__":
    main()
