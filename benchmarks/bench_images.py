"""Image stage throughput vs. the floor (decode source + encode output at bucket size, no resize).

    .venv/bin/python benchmarks/bench_images.py [--quick]

Sources: 4 MP JPEG, 4 MP PNG, 2 MP lossy WebP (synthetic anime-like: flat fills, gradients, lines,
grain) to the kohaku-xl bucket (~1 MP), webp-fast codec. Per core (1 process) and all cores.
Target: stage time <= 1.25x the floor's. Also: peak RSS of one worker on a 40 MP JPEG (< 1 GB),
measured with resource.getrusage in a fresh child process, beside a child that only imports.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kohaku_data.config import ImageConfig  # noqa: E402
from kohaku_data.images import bucket_resolutions, choose_bucket, process_image  # noqa: E402

CONFIG = ImageConfig()
RESULTS = Path(__file__).parent / "results" / "images.json"


def artwork(size: tuple[int, int], seed: int) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.dstack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255])
    base += rng.normal(0, 4, (h, w, 1)).astype(np.float32)  # grain
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        box = sorted(rng.integers(0, w, 2)), sorted(rng.integers(0, h, 2))
        draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.integers(0, 256, 3).tolist()),
                     outline=(20, 20, 20), width=3)
    return im


def sources(n: int) -> dict[str, list[bytes]]:
    def enc(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()
    return {
        "jpeg-4mp": [enc(artwork((2304, 1728), i), "JPEG", quality=92) for i in range(n)],
        "png-4mp": [enc(artwork((1728, 2304), i), "PNG") for i in range(n)],
        "webp-lossy-2mp": [enc(artwork((1632, 1224), i), "WEBP", quality=85) for i in range(n)],
    }


def stage(data: bytes) -> int:
    r = process_image(data, CONFIG)
    assert r.status == "ok", r.detail
    return len(r.data)


def floor(data: bytes) -> int:
    """Decode the source, encode the output at the bucket size: the least any stage must do."""
    im = Image.open(io.BytesIO(data))
    im.load()
    bw, bh = choose_bucket(im.size, bucket_resolutions(CONFIG.bucket_preset()))
    codec = CONFIG.codec_preset()
    buf = io.BytesIO()
    im.crop((0, 0, bw, bh)).save(buf, "WEBP", lossless=True, exact=True, quality=codec.quality, method=codec.method)
    return len(buf.getvalue())


def timed(fn, items: list[bytes], workers: int) -> float:
    start = time.perf_counter()
    if workers == 1:
        for d in items:
            fn(d)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(fn, items, chunksize=1))
    return time.perf_counter() - start


def throughput(srcs: dict[str, list[bytes]], workers: int) -> dict:
    out = {}
    for name, items in srcs.items():
        fn_floor = timed(floor, items, workers)
        fn_stage = timed(stage, items, workers)
        out[name] = {
            "images": len(items), "stage_img_s": len(items) / fn_stage, "floor_img_s": len(items) / fn_floor,
            "ratio_time": fn_stage / fn_floor,
        }
        print(f"  {name:15s} workers={workers}: stage {len(items) / fn_stage:6.2f} img/s   "
              f"floor {len(items) / fn_floor:6.2f} img/s   stage/floor time {fn_stage / fn_floor:.2f}x", flush=True)
    return out


CHILD = """
import io, resource, sys
import numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from kohaku_data.config import ImageConfig
from kohaku_data.images import process_image
data = open({path!r}, "rb").read() if {path!r} else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if data:
    r = process_image(data, ImageConfig())
    assert r.status == "ok", r.detail
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(path: str) -> float:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), path=path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024  # ru_maxrss is KiB on Linux


MAKE_40MP = """
import sys
sys.path.insert(0, {bench!r})
from bench_images import artwork
artwork((7744, 5163), 0).save({path!r}, "JPEG", quality=90)
"""


def memory(tmp: Path) -> dict:
    """Run first, while this process is small: a child's ru_maxrss starts from its parent's at fork."""
    src = tmp / "bench-40mp.jpg"
    make = MAKE_40MP.format(bench=str(Path(__file__).resolve().parent), path=str(src))
    subprocess.run([sys.executable, "-c", make], check=True)
    base, peak = peak_rss_mb(""), peak_rss_mb(str(src))
    src.unlink()
    print(f"  peak RSS, 40 MP JPEG → bucket: {peak:.0f} MB (imports only: {base:.0f} MB; limit 1024 MB)")
    return {"peak_rss_mb_40mp": peak, "baseline_rss_mb": base, "under_1gb": peak < 1024}


def main() -> None:
    quick = "--quick" in sys.argv
    n = 3 if quick else 12
    cores = len(os.sched_getaffinity(0))
    print(f"image stage benchmark ({'quick' if quick else 'full'}: {n} images per source, {cores} cores)")
    results = {"memory": memory(RESULTS.parent)}
    srcs = sources(n)
    results["per_core"] = throughput(srcs, 1)
    if cores > 1:
        results["all_cores"] = throughput({k: v * 2 for k, v in srcs.items()}, cores)
    results["meta"] = {"quick": quick, "cores": cores, "target_ratio": 1.25, "bucket": "kohaku-xl", "codec": "webp-fast"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    worst = max(v["ratio_time"] for v in results["per_core"].values())
    print(f"worst stage/floor time ratio per core: {worst:.2f}x (target 1.25x; the one LANCZOS resize from the"
          " full original and the verifying decode are the difference)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
