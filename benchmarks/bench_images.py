"""Image stage throughput vs. the floor (decode the source + encode the output, no resize).

    .venv/bin/python benchmarks/bench_images.py [--quick]

Sources: 4 MP JPEG, 4 MP PNG, 2 MP lossy WebP (synthetic anime-like: flat fills, gradients, lines,
grain) to the kohaku-xl bucket (~1 MP), for BOTH codec presets (webp-fast m0 q0, webp-small m4 q80);
the floor encodes with the same preset as the stage. Target: stage time <= 1.25x the floor's.

floor       decode the source + encode THE STAGE'S OUTPUT PIXELS (computed beforehand, untimed):
            exactly the decode and encode work the stage itself must do; the stage adds the one
            LANCZOS resize, the verifying decode + compare, normalise/EXIF checks and sha256.
floor_crop  the earlier definition, for comparison: decode + encode a bucket-sized crop of the
            source. A crop of a 4 MP image has less detail per pixel than the downscaled output,
            so it encodes faster (notably with webp-small) and overstates the stage's overhead.

Per core: this process pinned to one core, CPU time (time.process_time), images interleaved
(floor, crop floor, stage per image) so other load on the machine affects all alike; with
several rounds the per-image minimum is kept. All cores: a process pool of one worker per core,
wall clock (the pool is started and the inputs loaded before timing), best of the rounds, and
the ratio of the workers' summed CPU time (robust when other processes share the machine).
Also: the stage's parts (median ms on the first image of each source) and the peak RSS of one
worker on a 40 MP JPEG and a 40 MP RGBA PNG (< 1 GB), measured with resource.getrusage in a fresh child process.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import write_results  # noqa: E402
from kohaku_data.config import ImageConfig  # noqa: E402
from kohaku_data.images import bucket_resolutions, choose_bucket, process_image  # noqa: E402
from kohaku_data.images import resize as resize_mod  # noqa: E402
from kohaku_data.images.decode import decode  # noqa: E402
from kohaku_data.images.encode import encode, verify  # noqa: E402
from kohaku_data.images.normalise import normalise  # noqa: E402
from kohaku_data.images.stage import _plan  # noqa: E402

PRESETS = ("webp-fast", "webp-small")
RESULTS = Path(__file__).parent / "results" / "images.json"
TARGET = 1.25


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


# -- the three measured functions (module level: they run in pool workers too) -------------------
def stage(data: bytes, config: ImageConfig) -> int:
    r = process_image(data, config)
    assert r.status == "ok", r.detail
    return len(r.data)


def floor(data: bytes, output: Image.Image, config: ImageConfig) -> int:
    """Decode the source, encode the stage's output pixels with the same preset: the least any stage does."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return len(encode(output, config.codec_preset())[1])


def floor_crop(data: bytes, config: ImageConfig) -> int:
    """The earlier floor: decode the source, encode a bucket-sized crop of it."""
    im = Image.open(io.BytesIO(data))
    im.load()
    bw, bh = choose_bucket(im.size, bucket_resolutions(config.bucket_preset()))
    return len(encode(im.crop((0, 0, bw, bh)), config.codec_preset())[1])


def outputs(items: list[bytes], config: ImageConfig) -> list[Image.Image]:
    """The stage's intended output pixels for each source (untimed): decoded from its stored bytes."""
    result = []
    for data in items:
        im = Image.open(io.BytesIO(process_image(data, config).data))
        im.load()
        result.append(im)
    return result


# -- per core ------------------------------------------------------------------------------------
def cpu_ms(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1000


def per_core(items: list[bytes], outs: list[Image.Image], config: ImageConfig, rounds: int) -> dict:
    best = {"stage": [], "floor": [], "floor_crop": []}
    for i, data in enumerate(items):
        runs = {k: [] for k in best}
        for _ in range(rounds):
            runs["floor"].append(cpu_ms(lambda: floor(data, outs[i], config)))
            runs["floor_crop"].append(cpu_ms(lambda: floor_crop(data, config)))
            runs["stage"].append(cpu_ms(lambda: stage(data, config)))
        for k, v in runs.items():
            best[k].append(min(v))
    total = {k: sum(v) / 1000 for k, v in best.items()}
    n = len(items)
    return {
        "images": n, "stage_img_s": n / total["stage"], "floor_img_s": n / total["floor"],
        "floor_crop_img_s": n / total["floor_crop"], "ratio_time": total["stage"] / total["floor"],
        "ratio_time_vs_crop_floor": total["stage"] / total["floor_crop"],
        "stage_ms": 1000 * total["stage"] / n, "floor_ms": 1000 * total["floor"] / n,
    }


def parts(data: bytes, config: ImageConfig, reps: int) -> dict:
    """Median CPU ms of each part of the stage on one source, and of the floor's two parts."""
    codec = config.codec_preset()
    im = decode(data, max_pixels=config.max_pixels, animated=config.animated)
    norm = normalise(im, alpha=config.alpha, background=config.background)
    plan = _plan(norm.size, config)
    out = resize_mod.apply(norm, plan, reducing_gap=None, linear_light=False)
    stored = encode(out, codec)[1]
    steps = {
        "decode": lambda: decode(data, max_pixels=config.max_pixels, animated=config.animated),
        "decode_plain": lambda: Image.open(io.BytesIO(data)).load(),
        "normalise": lambda: normalise(im, alpha=config.alpha, background=config.background),
        "resize_lanczos": lambda: resize_mod.apply(norm, plan, reducing_gap=None, linear_light=False),
        "encode": lambda: encode(out, codec),
        "verify": lambda: verify(stored, out),
        "sha256": lambda: hashlib.sha256(stored).hexdigest(),
    }
    return {k: statistics.median(cpu_ms(fn) for _ in range(reps)) for k, fn in steps.items()}


# -- all cores -----------------------------------------------------------------------------------
_WORKER: dict = {}  # per worker process: the inputs, loaded once by the pool initializer (untimed)


def _init_worker(items: list[bytes], outs: list[tuple[str, tuple[int, int], bytes]], config: ImageConfig) -> None:
    _WORKER.update(items=items, config=config, outs=[Image.frombytes(m, s, b) for m, s, b in outs])


def _ready(_: int) -> None:
    time.sleep(0.2)  # long enough that every worker starts (and loads its inputs) before timing


def _stage_task(i: int) -> float:
    data = _WORKER["items"][i % len(_WORKER["items"])]
    return cpu_ms(lambda: stage(data, _WORKER["config"]))


def _floor_task(i: int) -> float:
    k = i % len(_WORKER["items"])
    return cpu_ms(lambda: floor(_WORKER["items"][k], _WORKER["outs"][k], _WORKER["config"]))


def all_cores(
    items: list[bytes], outs: list[Image.Image], config: ImageConfig, cores: int, rounds: int, floor_ms: float,
) -> dict:
    """Wall-clock images/s of the pool, and the stage/floor ratio of the workers' CPU time (the
    machine is shared, so wall clock also measures whoever else runs; CPU time does not)."""
    raw = [(o.mode, o.size, o.tobytes()) for o in outs]
    # enough tasks for ~0.6 s of floor work per worker (fast presets run short), at least 2 per image
    n = max(2 * len(items), math.ceil(0.6 * cores / (floor_ms / 1000)))
    wall = {"stage": float("inf"), "floor": float("inf")}
    cpu = {"stage": float("inf"), "floor": float("inf")}
    with ProcessPoolExecutor(cores, initializer=_init_worker, initargs=(items, raw, config)) as pool:
        list(pool.map(_ready, range(2 * cores)))
        for _ in range(rounds):
            for name, fn in (("floor", _floor_task), ("stage", _stage_task)):
                start = time.perf_counter()
                cpu[name] = min(cpu[name], sum(pool.map(fn, range(n), chunksize=1)))
                wall[name] = min(wall[name], time.perf_counter() - start)
    return {"images": n, "workers": cores, "stage_img_s": n / wall["stage"], "floor_img_s": n / wall["floor"],
            "ratio_time": wall["stage"] / wall["floor"], "ratio_cpu": cpu["stage"] / cpu["floor"]}


# -- memory --------------------------------------------------------------------------------------
CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from kohaku_data.config import ImageConfig
from kohaku_data.images import process_image
data = open({path!r}, "rb").read() if {path!r} else None
if data:
    r = process_image(data, ImageConfig(codec={codec!r}))
    assert r.status == "ok", r.detail
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(path: str, codec: str) -> float:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), path=path, codec=codec)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024  # ru_maxrss is KiB on Linux


MAKE_40MP = """
import sys
import numpy as np
from PIL import Image
sys.path.insert(0, {bench!r})
from bench_images import artwork
artwork((7744, 5163), 0).save({jpeg!r}, "JPEG", quality=90)
a = np.zeros((5163, 7744, 4), np.uint8)  # RGBA with partial transparency: the premultiplied path
a[..., 0], a[..., 1], a[..., 3] = np.arange(7744) % 256, (np.arange(5163) % 256)[:, None], 255
a[:1700, :2500, 3] = 40
Image.fromarray(a, "RGBA").save({png!r}, compress_level=1)
"""


def memory(tmp: Path, codecs: tuple[str, ...]) -> dict:
    """Run first, while this process is small: a child's ru_maxrss starts from its parent's at fork."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"jpeg-40mp": tmp / "bench-40mp.jpg", "png-rgba-40mp": tmp / "bench-40mp-rgba.png"}
    make = MAKE_40MP.format(bench=str(Path(__file__).resolve().parent), jpeg=str(files["jpeg-40mp"]),
                            png=str(files["png-rgba-40mp"]))
    subprocess.run([sys.executable, "-c", make], check=True)
    try:
        result = {"baseline_rss_mb": peak_rss_mb("", PRESETS[0])}
        for kind, path in files.items():
            for codec in codecs:
                result[f"peak_rss_mb_{kind}_{codec}"] = peak_rss_mb(str(path), codec)
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)
    peak = max(v for k, v in result.items() if k.startswith("peak"))
    result["under_1gb"] = peak < 1024
    print("peak RSS of one worker, 40 MP source → bucket: "
          + ", ".join(f"{k[12:]} {v:.0f} MB" for k, v in result.items() if k.startswith("peak"))
          + f" (imports only: {result['baseline_rss_mb']:.0f} MB; limit 1024 MB)", flush=True)
    return result


# -- report --------------------------------------------------------------------------------------
def print_parts(name: str, p: dict, floor_ms: float) -> None:
    print(f"    {name:15s} decode {p['decode']:5.1f}  normalise {p['normalise']:4.1f}  "
          f"resize {p['resize_lanczos']:5.1f}  encode {p['encode']:6.1f}  verify {p['verify']:5.1f}  "
          f"sha256 {p['sha256']:4.1f}  | floor {floor_ms:6.1f} ms; LANCZOS alone = "
          f"{p['resize_lanczos'] / floor_ms:.2f}x it, resize+verify = {(p['resize_lanczos'] + p['verify']) / floor_ms:.2f}x",
          flush=True)


def run_preset(codec: str, srcs: dict[str, list[bytes]], cores: int, quick: bool) -> dict:
    config = ImageConfig(codec=codec)
    rounds = 1 if quick else 3
    res: dict = {"per_core": {}, "all_cores": {}, "parts_ms": {}}
    print(f"\n[{codec}] per core (pinned, CPU time)       stage img/s  floor img/s  stage/floor  (vs crop floor)")
    outs = {name: outputs(items, config) for name, items in srcs.items()}
    pin = {max(os.sched_getaffinity(0))}
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, pin)
    try:
        for name, items in srcs.items():
            r = res["per_core"][name] = per_core(items, outs[name], config, rounds)
            print(f"  {name:38s} {r['stage_img_s']:10.2f}  {r['floor_img_s']:11.2f}  {r['ratio_time']:10.2f}x"
                  f"  ({r['ratio_time_vs_crop_floor']:.2f}x)", flush=True)
        print("  parts (median CPU ms, first image):")
        for name, items in srcs.items():
            res["parts_ms"][name] = parts(items[0], config, 3 if quick else 5)
            print_parts(name, res["parts_ms"][name], res["per_core"][name]["floor_ms"])
    finally:
        os.sched_setaffinity(0, saved)
    if cores > 1:
        print(f"[{codec}] all cores ({cores} workers, wall clock)  stage img/s  floor img/s  stage/floor  (CPU time)")
        for name, items in srcs.items():
            floor_ms = res["per_core"][name]["floor_ms"]
            r = res["all_cores"][name] = all_cores(items, outs[name], config, cores, rounds, floor_ms)
            print(f"  {name:38s} {r['stage_img_s']:10.2f}  {r['floor_img_s']:11.2f}  {r['ratio_time']:10.2f}x"
                  f"  ({r['ratio_cpu']:.2f}x)", flush=True)
    return res


def main() -> None:
    quick = "--quick" in sys.argv
    n = 3 if quick else 10
    cores = len(os.sched_getaffinity(0))
    print(f"image stage benchmark ({'quick' if quick else 'full'}: {n} images per source, {cores} cores, "
          f"load average {os.getloadavg()[0]:.2f})")
    results: dict = {"memory": memory(RESULTS.parent, PRESETS[:1] if quick else PRESETS)}  # same decode either way
    srcs = sources(n)
    results["presets"] = {codec: run_preset(codec, srcs, cores, quick) for codec in PRESETS}
    results["meta"] = {"quick": quick, "cores": cores, "target_ratio": TARGET, "bucket": "kohaku-xl",
                       "presets": list(PRESETS), "load_average": os.getloadavg()[0]}
    print()
    for codec in PRESETS:
        per = results["presets"][codec]["per_core"]
        worst = max(per, key=lambda k: per[k]["ratio_time"])
        print(f"{codec}: worst stage/floor per core {per[worst]['ratio_time']:.2f}x ({worst}; target {TARGET}x)")
    write_results("images", results)


if __name__ == "__main__":
    main()
