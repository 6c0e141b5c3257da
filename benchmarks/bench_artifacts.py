"""Source artifact measures (kohaku_data/images/artifacts) on a labelled set, beside the image stage.

The labelled set is made from the sample generator's drawings (flat, paper-grained, and
anti-aliased = drawn at 2x and reduced with LANCZOS) at several sizes:
  clean       the drawing as PNG (negatives for every test)
  jpeg        JPEG at IJG quality 30-100, 4:4:4 and 4:2:0 (label: the quality)
  jpeg_png    that JPEG decoded and saved as PNG (label: JPEG history, its quality)
  webp        lossy WebP 30-95 (label: lossy)
  upscaled    reduced by s = 1.25-4 (LANCZOS), enlarged back with nearest / bilinear / bicubic /
              Lanczos, stored as PNG, or as JPEG q90 for every third (label: s)
Prints: JPEG quality mean absolute error (target <= 3), JPEG-history recall at q <= 85 (>= 0.9)
and false flags on clean art (<= 2 %) per threshold, upscale precision (>= 0.95) and recall at
x2 and above (>= 0.9) and at x1.5 (>= 0.8), factor error, and the measures' CPU cost per image
beside the image stage's on the same images (<= 10 %).

    python benchmarks/bench_artifacts.py [--quick]
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import write_results  # noqa: E402
from kohaku_data.config import ArtifactRules, ImageConfig  # noqa: E402
from kohaku_data.images import process_image  # noqa: E402
from kohaku_data.images.artifacts import measure_artifacts  # noqa: E402
from kohaku_data.images.decode import decode  # noqa: E402
from kohaku_data.sample.drawing import anime_picture  # noqa: E402

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
FACTORS = (1.25, 1.5, 2.0, 3.0, 4.0)
QUALITIES = (30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 100)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def drawing(rng: np.random.Generator, size: tuple[int, int], style: str) -> Image.Image:
    if style == "antialiased":
        return anime_picture(rng, size[0] * 2, size[1] * 2).resize(size, Image.LANCZOS)
    return anime_picture(rng, *size, texture=style == "grain")


def labelled_set(sizes: tuple[tuple[int, int], ...], per_size: int, seed: int = 0) -> list[dict]:
    """Items {kind, data, style, size, quality?, subsampling?, factor?, filter?}."""
    rng = np.random.default_rng(seed)
    items: list[dict] = []
    styles = ("flat", "grain", "antialiased")
    n = 0
    for size in sizes:
        for i in range(per_size):
            style = styles[n % 3]
            im = drawing(rng, size, style)
            base = {"style": style, "size": size}
            items.append({**base, "kind": "clean", "data": encode(im, "PNG")})
            for j, q in enumerate(QUALITIES[n % 2::2]):
                ss = (0, 2)[(n + j) % 2]
                jpg = encode(im, "JPEG", quality=q, subsampling=ss)
                items.append({**base, "kind": "jpeg", "data": jpg, "quality": q, "subsampling": ss})
                items.append({**base, "kind": "jpeg_png", "quality": q,
                              "data": encode(Image.open(io.BytesIO(jpg)).convert("RGB"), "PNG")})
            for q in (30, 60, 80, 95)[n % 2::2]:
                items.append({**base, "kind": "webp", "data": encode(im, "WEBP", quality=q), "quality": q})
            for k, s in enumerate(FACTORS):
                name = tuple(FILTERS)[(n + k) % 4]
                small = im.resize((round(size[0] / s), round(size[1] / s)), Image.LANCZOS)
                up = small.resize(size, FILTERS[name])
                as_jpeg = (n + k) % 3 == 0
                data = encode(up, "JPEG", quality=90) if as_jpeg else encode(up, "PNG")
                items.append({**base, "kind": "upscaled", "data": data, "factor": s, "filter": name, "jpeg": as_jpeg})
            n += 1
    return items


def measure_all(items: list[dict]) -> float:
    """Measure every item (results in item['m']); CPU seconds per image of the measures alone."""
    spent = 0.0
    for item in items:
        im = decode(item["data"], max_pixels=10**9, animated="first")
        start = time.process_time()
        item["m"] = measure_artifacts(im, item["data"])
        spent += time.process_time() - start
    return spent / len(items)


def stage_cost(items: list[dict], config: ImageConfig) -> float:
    """CPU seconds per image of the whole image stage (measures included) on the same files."""
    start = time.process_time()
    for item in items:
        process_image(item["data"], config)
    return (time.process_time() - start) / len(items)


def jpeg_quality_error(items: list[dict]) -> dict:
    jpegs = [i for i in items if i["kind"] == "jpeg"]
    err = [abs(i["m"]["jpeg_quality"] - i["quality"]) for i in jpegs]
    sub = [i["m"]["jpeg_subsampling"] == ("4:4:4", "4:2:0")[i["subsampling"] // 2] for i in jpegs]
    return {"n": len(jpegs), "mae": round(float(np.mean(err)), 3), "max_error": int(max(err)),
            "subsampling_correct": round(float(np.mean(sub)), 4)}


def history_table(items: list[dict], thresholds: tuple[float, ...]) -> list[dict]:
    past = [i for i in items if i["kind"] == "jpeg_png"]
    clean = [i for i in items if i["kind"] == "clean"]
    rows = []
    for t in thresholds:
        def flagged(i: dict) -> bool:
            return (i["m"]["jpeg_history"] or 0.0) >= t
        low = [i for i in past if i["quality"] <= 85]
        rows.append({
            "threshold": t, "recall_q85": round(float(np.mean([flagged(i) for i in low])), 4),
            "recall_q90_95": round(float(np.mean([flagged(i) for i in past if 85 < i["quality"] < 100])), 4),
            "false_flags_clean": round(float(np.mean([flagged(i) for i in clean])), 4),
        })
    errs = [abs(i["m"]["jpeg_history_quality"] - i["quality"]) for i in past
            if i["quality"] <= 85 and i["m"]["jpeg_history_quality"] is not None]
    rows.append({"past_quality_mae_q85": round(float(np.mean(errs)), 2) if errs else None, "estimated": len(errs)})
    return rows


def upscale_table(items: list[dict], min_factor: float) -> dict:
    """Detection = measured factor >= min_factor; positives = labelled upscales, negatives = the rest."""
    def detected(i: dict) -> bool:
        return (i["m"]["upscale_factor"] or 1.0) >= min_factor
    ups = [i for i in items if i["kind"] == "upscaled"]
    negatives = [i for i in items if i["kind"] != "upscaled"]
    tp = sum(detected(i) for i in ups)
    fp = sum(detected(i) for i in negatives)
    recall = {f"x{s:g}": round(float(np.mean([detected(i) for i in ups if i["factor"] == s])), 4) for s in FACTORS}
    by_filter = {f: round(float(np.mean([detected(i) for i in ups if i["filter"] == f and i["factor"] >= 2])), 4)
                 for f in FILTERS}
    after_jpeg = round(float(np.mean([detected(i) for i in ups if i["jpeg"] and i["factor"] >= 2])), 4)
    found = [i for i in ups if detected(i)]
    rel = [abs(i["m"]["upscale_factor"] - i["factor"]) / i["factor"] for i in found]
    return {"min_factor": min_factor, "precision": round(tp / max(1, tp + fp), 4), "false_flags": fp,
            "negatives": len(negatives), "recall_by_factor": recall, "recall_x2_up_by_filter": by_filter,
            "recall_x2_up_after_jpeg": after_jpeg,
            "factor_rel_error_median": round(float(np.median(rel)), 4) if rel else None,
            "factor_rel_error_p90": round(float(np.quantile(rel, 0.9)), 4) if rel else None}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    sizes = ((640, 480), (900, 1200)) if quick else ((640, 480), (900, 1200), (1280, 960), (1500, 1500))
    items = labelled_set(sizes, 3 if quick else 6)
    measure_ms = measure_all(items) * 1e3
    stage_small = stage_cost(items, ImageConfig(bucket="sd15-512", too_small="native")) * 1e3
    stage_ms = stage_cost(items, ImageConfig(upscale=True)) * 1e3  # the default kohaku-xl buckets
    kinds = {k: sum(i["kind"] == k for i in items) for k in ("clean", "jpeg", "jpeg_png", "webp", "upscaled")}
    print(f"labelled set: {len(items)} images {kinds}, sizes {sizes}")
    jq = jpeg_quality_error(items)
    print(f"JPEG quality from tables: MAE {jq['mae']} (target <= 3), max error {jq['max_error']}, "
          f"subsampling right {jq['subsampling_correct']:.0%} ({jq['n']} JPEGs)")
    rules = ArtifactRules()
    hist = history_table(items, (0.15, 0.2, 0.25, 0.3, 0.35, 0.4))
    print("JPEG history (PNG saved from a JPEG): threshold, recall q<=85 (target >= 0.9), recall q90-95, "
          "false flags on clean (target <= 0.02)")
    for r in hist[:-1]:
        mark = "  <- default" if r["threshold"] == rules.history_threshold else ""
        print(f"  {r['threshold']:.2f}  {r['recall_q85']:.3f}  {r['recall_q90_95']:.3f}  {r['false_flags_clean']:.3f}{mark}")
    print(f"  past quality MAE at q<=85: {hist[-1]['past_quality_mae_q85']} ({hist[-1]['estimated']} estimated)")
    webps = [i for i in items if i["kind"] == "webp"]
    lossy_ok = np.mean([i["m"]["webp_lossy"] is True for i in webps])
    wq = np.mean([abs((i["m"]["webp_quality"] or 0) - i["quality"]) for i in webps])
    print(f"lossy WebP recognised {lossy_ok:.0%}, quality MAE {wq:.1f} ({len(webps)} files)")
    ups = [upscale_table(items, f) for f in (1.2, 1.3, 1.4)]
    print("upscale detection (measured factor >= m): precision (target >= 0.95), recall by factor "
          "(x2+ target >= 0.9, x1.5 >= 0.8), factor error")
    for u in ups:
        print(f"  m={u['min_factor']}: precision {u['precision']:.3f} ({u['false_flags']} of {u['negatives']} "
              f"negatives), recall {u['recall_by_factor']}, x2+ by filter {u['recall_x2_up_by_filter']}, "
              f"x2+ after JPEG {u['recall_x2_up_after_jpeg']}, factor error median {u['factor_rel_error_median']} "
              f"p90 {u['factor_rel_error_p90']}")
    ratio = measure_ms / stage_ms
    print(f"cost per image (CPU, one core): measures {measure_ms:.1f} ms, image stage {stage_ms:.1f} ms "
          f"(kohaku-xl buckets, webp-fast, every image stored) -> {ratio:.1%} (target <= 10%); "
          f"sd15-512 buckets, native when small: {stage_small:.1f} ms -> {measure_ms / stage_small:.1%}")
    write_results("artifacts", {"quick": quick, "images": len(items), "kinds": kinds, "jpeg_quality": jq,
                                "jpeg_history": hist, "webp": {"recognised": float(lossy_ok), "quality_mae": float(wq)},
                                "upscale": ups, "measure_ms": round(measure_ms, 2), "stage_ms": round(stage_ms, 2),
                                "stage_sd15_native_ms": round(stage_small, 2),
                                "cost_ratio": round(ratio, 4)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
