"""Resolution ladder cost: the same inputs built with the main bucket alone, and with two more
levels (`[image] levels = ["square-512", "square-256"]`), in the same run, one worker each.

    python benchmarks/bench_levels.py [--posts 60] [--side 1600] [--bucket kohaku-xl]

Each build decodes every original once; the extra levels add a LANCZOS resize, an encode and a
verify each, of images ~1/4 and ~1/16 of the main one's area. Prints both wall times and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kohaku_data.config import Recipe  # noqa: E402
from kohaku_data.sample.metadata import write_sample_db  # noqa: E402


def make_inputs(root: Path, posts: int, side: int) -> tuple[Path, Path]:
    db = root / "danbooru.db"
    write_sample_db(db, posts, seed=0)
    src = root / "raw"
    src.mkdir()
    with sqlite3.connect(db) as conn:
        for key, in conn.execute("SELECT id FROM post ORDER BY id").fetchall():
            rng = np.random.default_rng(key)
            w, h = int(side * rng.uniform(0.7, 1.0)), int(side * rng.uniform(0.9, 1.3))
            yy, xx = np.mgrid[0:h, 0:w]
            px = np.stack([(xx // 7) % 256, (yy // 5 + key) % 256, ((xx + yy) // 9) % 256], -1)
            px = (px + rng.integers(0, 8, px.shape)).clip(0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, format="PNG", compress_level=1)
            data = buf.getvalue()
            (src / f"{key}.png").write_bytes(data)
            conn.execute("UPDATE post SET md5=?, file_size=?, file_ext='png', image_width=?, image_height=? "
                         "WHERE id=?", (hashlib.md5(data).hexdigest(), len(data), w, h, key))
    return db, src


def timed_build(db: Path, src: Path, out: Path, recipe: Recipe) -> float:
    from kohaku_data.assembly import build_dataset
    from kohaku_data.db import DanbooruDB

    with DanbooruDB.open(db, readonly=True) as handle:
        start = time.perf_counter()
        build_dataset(src, out, recipe, handle, workers=1)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=60)
    ap.add_argument("--side", type=int, default=1600)
    ap.add_argument("--bucket", default="kohaku-xl")
    ap.add_argument("--quick", action="store_true", help="make bench QUICK=1: 12 posts of 1024 px")
    args = ap.parse_args()
    if args.quick:
        args.posts, args.side = min(args.posts, 12), min(args.side, 1024)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db, src = make_inputs(root, args.posts, args.side)
        base = {"name": "b", "image": {"bucket": args.bucket}, "shard_max_bytes": 50_000_000}
        one = Recipe.model_validate(base)
        three = Recipe.model_validate({**base, "image": {"bucket": args.bucket, "levels": ["square-512", "square-256"]}})
        times = {"1 level": [], "3 levels": []}
        for rep in range(2):  # interleaved: the machine's drift hits both
            times["1 level"].append(timed_build(db, src, root / f"one{rep}", one))
            times["3 levels"].append(timed_build(db, src, root / f"three{rep}", three))
        best = {k: min(v) for k, v in times.items()}
        for k, v in best.items():
            print(f"{k}: {v:.2f} s ({args.posts} posts, ~{args.side}px originals, {args.bucket})")
        print(f"ratio 3/1: {best['3 levels'] / best['1 level']:.2f}x")


if __name__ == "__main__":
    main()
