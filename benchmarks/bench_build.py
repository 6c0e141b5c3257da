"""Benchmark: `kdata build` end to end vs the image stage alone (issue 5).

    .venv/bin/python benchmarks/bench_build.py [--quick] [--images N]

On a sample of N images (default 2000; --quick 300) made here (sample DB + generated drawings
with flat colours, lines and gradients, 500..900 px, PNG/JPEG, md5/size written to the DB):

- baseline: `process_image` over the same files, in one process (read bytes → stage);
- build w=1: `build_dataset` with one worker (plan, md5, image stage, staging, captions, tars,
  manifests, lock) → overhead = 1 - build rate / stage rate (target ≤ 10 %);
- build w=2: the same with two worker processes → scaling vs w=1;
- peak memory (max RSS of a fresh build process) at N/4 and N posts: should stay flat;
- re-captioning the built dataset (new caption config, images copied byte for byte) beside a
  plain copy of its tar files (disk speed) in the same run.

Results go to benchmarks/results/build.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import io
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kohaku_data.assembly import build_dataset  # noqa: E402
from kohaku_data.assembly.recaption import recaption_dataset  # noqa: E402
from kohaku_data.config import Recipe  # noqa: E402
from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.images import process_image  # noqa: E402
from kohaku_data.sample.metadata import write_sample_db  # noqa: E402
from kohaku_data.sources import open_source, read_entry  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "build"
RECIPE = Recipe.model_validate({"name": "bench", "version": "1", "image": {"bucket": "demo-256"},
                                "shard_max_bytes": 20_000_000})


def drawing(seed: int, width: tuple[int, int] = (500, 900), height: tuple[int, int] = (500, 900),
            shapes: int = 12, line: int = 3, ext: str | None = None) -> tuple[bytes, str, int, int]:
    """A flat-colour drawing with outlined shapes: (bytes, ext, width, height); JPEG for every
    fourth seed unless `ext` says which."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(*width)), int(rng.integers(*height))
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.random(3)[None, None, :]
    img = Image.fromarray(np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(shapes):
        box = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
        draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.integers(0, 256, 3).tolist()),
                     outline=(0, 0, 0), width=line)
    buf = io.BytesIO()
    ext = ext or ("jpg" if seed % 4 == 0 else "png")
    img.save(buf, format="JPEG" if ext == "jpg" else "PNG", quality=90)
    return buf.getvalue(), ext, w, h


def make_sample(n: int, root: Path | None = None, seed: int = 1,
                draw: Callable[[int], tuple[bytes, str, int, int]] = drawing) -> tuple[Path, Path]:
    """A sample DB of `n` posts and one image per post (`draw(post id)`), the DB's md5, size,
    format and dims set to the file's; cached under `root` (default CACHE/n<n>)."""
    root = root or CACHE / f"n{n}"
    db, src = root / "danbooru.db", root / "raw"
    if (root / "done").exists():
        return db, src
    shutil.rmtree(root, ignore_errors=True)
    src.mkdir(parents=True)
    write_sample_db(db, n, seed=seed)
    with sqlite3.connect(db) as conn:
        for (key,) in conn.execute("SELECT id FROM post").fetchall():
            data, ext, w, h = draw(key)
            (src / f"{key}.{ext}").write_bytes(data)
            conn.execute("UPDATE post SET md5=?, file_size=?, file_ext=?, image_width=?, image_height=? WHERE id=?",
                         (hashlib.md5(data).hexdigest(), len(data), ext, w, h, key))
    conn.close()
    (root / "done").touch()
    return db, src


def stage_only(src: Path) -> float:
    entries = open_source(src).entries()
    start = time.perf_counter()
    for entry in entries:
        process_image(read_entry(entry), RECIPE.image, name=entry.name)
    return len(entries) / (time.perf_counter() - start)


def build_rate(db_path: Path, src: Path, out: Path, workers: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with DanbooruDB.open(db_path, readonly=True) as db:
        result = build_dataset(src, out, RECIPE, db, workers=workers)
    return result.processed / (time.perf_counter() - start), result.samples


def recaption_vs_copy(db_path: Path, built: Path) -> tuple[float, float, float]:
    """Seconds to re-caption `built` with another caption config, to copy its tars, and to copy
    them with a sha256 and an fsync each (as index.json and a crash-safe write need)."""
    recipe = RECIPE.model_copy(update={"caption": RECIPE.caption.model_copy(update={"keep_separator": None})})
    copy_dir = built.with_name("copy")
    shutil.rmtree(copy_dir, ignore_errors=True)
    copy_dir.mkdir()
    start = time.perf_counter()
    for tar in sorted(built.glob("*.tar")):
        shutil.copyfile(tar, copy_dir / tar.name)
    copy_s = time.perf_counter() - start
    start = time.perf_counter()
    for tar in sorted(built.glob("*.tar")):  # what any safe rewrite must also do: hash, fsync
        data = tar.read_bytes()
        hashlib.sha256(data).hexdigest()
        with open(copy_dir / tar.name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    safe_copy_s = time.perf_counter() - start
    shutil.rmtree(copy_dir)
    start = time.perf_counter()
    with DanbooruDB.open(db_path, readonly=True) as db:
        result = recaption_dataset(built, recipe, db)
    recap_s = time.perf_counter() - start
    shutil.rmtree(result["out"], ignore_errors=True)
    return recap_s, copy_s, safe_copy_s


def peak_rss_mb(db_path: Path, src: Path, out: Path) -> float:
    """Max RSS of a fresh process that builds (one worker: the image stage runs in it too)."""
    shutil.rmtree(out, ignore_errors=True)
    code = (
        "import sys, resource; from pathlib import Path; sys.path.insert(0, sys.argv[4]);"
        "from benchmarks.bench_build import RECIPE; from kohaku_data.assembly import build_dataset;"
        "from kohaku_data.db import DanbooruDB;"
        "db = DanbooruDB.open(sys.argv[1], readonly=True);"
        "build_dataset(Path(sys.argv[2]), Path(sys.argv[3]), RECIPE, db, workers=1);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out_text = subprocess.check_output([sys.executable, "-c", code, str(db_path), str(src), str(out), str(ROOT)])
    return int(out_text.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=None)
    args = parser.parse_args()
    n = args.images or (300 if args.quick else 2000)
    db, src = make_sample(n)
    small_db, small_src = make_sample(n // 4)
    out = CACHE / "out"
    stage = stage_only(src)
    w1, samples = build_rate(db, src, out, 1)
    recap_s, copy_s, safe_copy_s = recaption_vs_copy(db, out)
    w2, _ = build_rate(db, src, out, 2)
    rss_small, rss_full = peak_rss_mb(small_db, small_src, out), peak_rss_mb(db, src, out)
    shutil.rmtree(out, ignore_errors=True)
    overhead = 1 - w1 / stage
    results = {
        "images": n, "samples": samples, "recipe": "demo-256 / webp-fast",
        "stage_only_images_per_s": round(stage, 2), "build_w1_images_per_s": round(w1, 2),
        "build_w2_images_per_s": round(w2, 2), "build_overhead": round(overhead, 4),
        "scaling_w2_vs_w1": round(w2 / w1, 3),
        "peak_rss_mb": {str(n // 4): round(rss_small, 1), str(n): round(rss_full, 1)},
        "peak_rss_ratio": round(rss_full / rss_small, 3),
        "recaption_s": round(recap_s, 3), "copy_tars_s": round(copy_s, 3),
        "copy_hash_fsync_s": round(safe_copy_s, 3), "recaption_vs_copy": round(recap_s / copy_s, 2),
        "recaption_vs_copy_hash_fsync": round(recap_s / safe_copy_s, 2),
    }
    print(f"image stage alone : {stage:8.1f} images/s  (baseline)")
    print(f"build, 1 worker   : {w1:8.1f} images/s  overhead {overhead:+.1%} (target <= 10%)")
    print(f"build, 2 workers  : {w2:8.1f} images/s  scaling x{w2 / w1:.2f} vs 1 worker")
    print(f"peak RSS          : {rss_small:.0f} MB at {n // 4} posts, {rss_full:.0f} MB at {n} posts "
          f"(ratio {rss_full / rss_small:.2f})")
    print(f"re-caption        : {recap_s:.2f} s vs {copy_s:.2f} s to copy the tars (x{recap_s / copy_s:.1f}), "
          f"{safe_copy_s:.2f} s to copy with sha256 + fsync (x{recap_s / safe_copy_s:.1f}); "
          f"{samples / recap_s:,.0f} samples/s, {1e6 * (recap_s - copy_s) / max(samples, 1):.0f} us per sample "
          "beyond the copy (small demo-256 images: per-sample cost dominates)")
    write_results("build", results)


if __name__ == "__main__":
    main()
