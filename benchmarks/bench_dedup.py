"""Near-duplicate detection: precision/recall of the phash threshold on a labelled set, the cost of
hashing beside the image stage, and the multi-index search beside all-pairs.

    .venv/bin/python benchmarks/bench_dedup.py [--quick]

Labelled set (generated, kohaku_data/sample/drawing.py): B original drawings (PNG, 1200-2000 px
sides — 1000-1400 with --quick — with paper grain) and, per original,
- positives (copies): 50 % and 75 % resizes, JPEG q60/q80 and lossy WebP q75 re-encodes, a light
  crop (2-5 % per side), a watermark (signature text + a translucent logo box in a corner), colour
  shifts (brightness ×1.12, saturation ×1.25, gamma 0.9) — each also re-encoded as JPEG q90;
- hard negatives: the same character (same palette and shapes, same random state) drawn at
  another framing on another background, and a near-identical composition (the same background,
  another character in the same place).
A pair is positive when both images come from one original. Every pair of the set is scored:
precision and recall of "phash distance <= t" per t, with the hard negatives' false positives
counted apart; the threshold chosen is the one with the best F1 (ties: the smaller t), and the
recipe default (`DedupConfig.threshold`) is set from it. The colour rule
(`colour_threshold`: a wider phash distance when the 64-cell colour histograms agree within
L1 0.3) is scored on the same pairs, with the search cost at its wider radius.

Cost: per-image CPU time of hashing (near: reduced decode + phash; exact: full decode + pixel
sha256) beside the image stage (`process_image`, kohaku-xl bucket, webp-fast) on the same
originals in the same run, stored as PNG and as JPEG q92 (JPEGs get the reduced `draft` decode)
— the ratio is the figure. Search: `near_pairs` on N random hashes with
planted near copies beside brute force all-pairs on a subset (timed, extrapolated as N²), and the
components of both compared on that subset.

Baseline: imagehash's `phash` (when installed: `pip install imagehash`; not a dependency of kdata)
on the same labelled set — its best F1 and CPU time per image beside ours.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import write_results  # noqa: E402
from kohaku_data.config import DedupConfig, ImageConfig  # noqa: E402
from kohaku_data.curation.groups import components, near_pairs  # noqa: E402
from kohaku_data.curation.phash import colour_l1, hash_image, phash_of_thumbs  # noqa: E402
from kohaku_data.images import process_image  # noqa: E402
from kohaku_data.sample.drawing import _background, anime_picture, draw_character  # noqa: E402


# -- the labelled set ---------------------------------------------------------------------------
def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (im.convert("RGB") if fmt in ("JPEG", "WEBP") else im).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _character(char_seed: int, bg_seed: int, w: int, h: int, frame: float = 1.0) -> Image.Image:
    """The character of `char_seed` on the background of `bg_seed`; `frame` < 1 draws it on a
    larger canvas and crops the middle (another framing of the same character)."""
    cw, ch = int(w / frame), int(h / frame)
    img = _background(np.random.default_rng(bg_seed), cw, ch)
    draw_character(ImageDraw.Draw(img), np.random.default_rng(char_seed), cw, ch)
    left, top = (cw - w) // 3, (ch - h) // 2
    return img.crop((left, top, left + w, top + h))


def _watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = im.convert("RGBA")
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = out.size
    box_w, box_h = int(w * 0.28), int(h * 0.07)
    x0, y0 = (w - box_w - 12, h - box_h - 12) if rng.random() < 0.5 else (12, 12)
    draw.rectangle((x0, y0, x0 + box_w, y0 + box_h), fill=(255, 255, 255, 150))
    draw.text((x0 + 8, y0 + box_h // 3), "@artist_name / pixiv 12345678", fill=(20, 20, 20, 230))
    return Image.alpha_composite(out, layer).convert("RGB")


def _gamma(im: Image.Image, g: float) -> Image.Image:
    lut = [round(255 * (v / 255) ** g) for v in range(256)]
    return im.point(lut * 3)


def labelled_set(bases: int, sides: tuple[int, int], seed: int = 0) -> tuple[list[bytes], list[int], list[str]]:
    """(file bytes, original index, kind) of every image: kind 'original', a copy kind, or 'hard:*'."""
    rng = np.random.default_rng(seed)
    data, family, kinds = [], [], []

    def add(b: bytes, f: int, kind: str) -> None:
        data.append(b)
        family.append(f)
        kinds.append(kind)

    for b in range(bases):
        w, h = int(rng.integers(*sides)), int(rng.integers(*sides))
        char_seed, bg_seed = 10_000 + b, 20_000 + b
        orig = _character(char_seed, bg_seed, w, h)
        grain = np.random.default_rng(b).normal(0, 4, (h, w, 1))
        orig = Image.fromarray(np.clip(np.asarray(orig, np.float32) + grain, 0, 255).astype(np.uint8))
        add(_encode(orig, "PNG"), b, "original")
        add(_encode(orig.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "PNG"), b, "resize50")
        add(_encode(orig.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BICUBIC), "JPEG", quality=90), b, "resize75")
        add(_encode(orig, "JPEG", quality=60), b, "jpeg60")
        add(_encode(orig, "JPEG", quality=80), b, "jpeg80")
        add(_encode(orig, "WEBP", quality=75), b, "webp75")
        m = [int(v) for v in rng.uniform(0.02, 0.05, 4) * (w, h, w, h)]
        add(_encode(orig.crop((m[0], m[1], w - m[2], h - m[3])), "PNG"), b, "crop")
        add(_encode(_watermark(orig, rng), "JPEG", quality=90), b, "watermark")
        add(_encode(ImageEnhance.Brightness(orig).enhance(1.12), "JPEG", quality=90), b, "brightness")
        add(_encode(ImageEnhance.Color(orig).enhance(1.25), "JPEG", quality=90), b, "saturation")
        add(_encode(_gamma(orig, 0.9), "JPEG", quality=90), b, "gamma")
        # hard negatives: own family ids (never positive with anything)
        add(_encode(_character(char_seed, 30_000 + b, w, h, frame=0.8), "PNG"), -1 - 2 * b, "hard:same_character")
        add(_encode(_character(40_000 + b, bg_seed, w, h), "PNG"), -2 - 2 * b, "hard:same_composition")
    for k in range(bases // 2):  # plain strangers
        add(_encode(anime_picture(np.random.default_rng(50_000 + k), 900, 900, texture=True), "PNG"), -10_000 - k, "other")
    return data, family, kinds


# -- measuring ----------------------------------------------------------------------------------
def _hash_all(data: list[bytes], exact: bool) -> tuple[np.ndarray, float, np.ndarray]:
    """(phash per image, CPU seconds per image, colour signatures (n, 64) uint8)."""
    start = time.process_time()
    thumbs, colours = [], []
    for d in data:
        hashes, thumb = hash_image(d, exact_pixels=exact, perceptual=not exact, max_pixels=1 << 30)
        if thumb is not None:
            thumbs.append(thumb)
            colours.append(np.frombuffer(hashes.colour, dtype=np.uint8))
    out = phash_of_thumbs(np.stack(thumbs)) if thumbs else np.empty(0, np.uint64)
    seconds = (time.process_time() - start) / len(data)
    return out, seconds, np.stack(colours) if colours else np.empty((0, 64), np.uint8)


def _imagehash_all(data: list[bytes]) -> tuple[np.ndarray, float] | None:
    """The baseline: imagehash's phash (full decode, 32x32 LANCZOS of the grey image, DCT) as
    uint64, and its CPU seconds per image; None when imagehash is not installed (it is a
    benchmark baseline only: `pip install imagehash`)."""
    try:
        import imagehash
    except ImportError:
        return None
    start = time.process_time()
    bits = [imagehash.phash(Image.open(io.BytesIO(d))).hash.flatten() for d in data]
    seconds = (time.process_time() - start) / len(data)
    return np.packbits(np.array(bits), axis=1).view(">u8").ravel().astype(np.uint64), seconds


def _stage_cost(data: list[bytes]) -> float:
    config = ImageConfig()
    start = time.process_time()
    for d in data:
        process_image(d, config)
    return (time.process_time() - start) / len(data)


def precision_recall(hashes: np.ndarray, family: np.ndarray, kinds: list[str], max_t: int = 24) -> list[dict]:
    n = len(hashes)
    i, j = np.triu_indices(n, 1)
    dist = np.bitwise_count(hashes[i] ^ hashes[j])
    positive = family[i] == family[j]
    hard = np.array([k.startswith("hard") for k in kinds])
    hard_pair = (hard[i] | hard[j]) & ~positive
    rows = []
    for t in range(max_t + 1):
        flagged = dist <= t
        tp, fp = int((flagged & positive).sum()), int((flagged & ~positive).sum())
        fn = int((~flagged & positive).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"threshold": t, "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                     "false_pairs": fp, "hard_negative_false_pairs": int((flagged & hard_pair).sum())})
    return rows


def colour_rule(hashes: np.ndarray, colours: np.ndarray, family: np.ndarray, thresholds: tuple[int, ...],
                wide: tuple[int, ...], distance: float) -> list[dict]:
    """Precision/recall of `d <= t, or d <= w and colour L1 <= distance` (DedupConfig.colour_threshold)."""
    i, j = np.triu_indices(len(hashes), 1)
    dist = np.bitwise_count(hashes[i] ^ hashes[j])
    l1 = colour_l1(colours[i], colours[j])
    positive = family[i] == family[j]
    rows = []
    for t in thresholds:
        for w in wide:
            flagged = (dist <= t) | ((dist <= w) & (l1 <= distance))
            tp, fp = int((flagged & positive).sum()), int((flagged & ~positive).sum())
            fn = int((~flagged & positive).sum())
            p, r = tp / max(1, tp + fp), tp / max(1, tp + fn)
            rows.append({"threshold": t, "colour_threshold": w, "colour_distance": distance, "precision": round(p, 4),
                         "recall": round(r, 4), "f1": round(2 * p * r / max(1e-12, p + r), 4), "false_pairs": fp})
    return rows


def recall_by_kind(hashes: np.ndarray, family: np.ndarray, kinds: list[str], t: int) -> dict[str, float]:
    """Share of each copy kind within t of its original."""
    originals = {f: hashes[k] for k, (f, kind) in enumerate(zip(family, kinds)) if kind == "original"}
    out: dict[str, list[bool]] = {}
    for h, f, kind in zip(hashes, family, kinds):
        if kind not in ("original", "other") and not kind.startswith("hard"):
            out.setdefault(kind, []).append(int(np.bitwise_count(h ^ originals[f])) <= t)
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(out.items())}


def search_scaling(n: int, subset: int, radius: int) -> dict:
    rng = np.random.default_rng(7)
    h = rng.integers(0, 1 << 63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    k = n // 10
    src, dst = rng.integers(0, n, k), rng.integers(0, n, k)
    flips = np.zeros(k, dtype=np.uint64)
    for _ in range(radius):
        flips |= np.uint64(1) << rng.integers(0, 64, k).astype(np.uint64)
    h[dst] = h[src] ^ flips
    start = time.perf_counter()
    i, j, _ = near_pairs(h, radius)
    mih = time.perf_counter() - start
    sub = h[:subset]
    start = time.perf_counter()
    bi, bj = [], []
    for a in range(0, subset, 2000):  # all pairs, in row blocks
        d = np.bitwise_count(sub[a:a + 2000, None] ^ sub[None, :])
        r, c = np.nonzero(d <= radius)
        keep = a + r < c
        bi.append(a + r[keep])
        bj.append(c[keep])
    brute_sub = time.perf_counter() - start
    si, sj, _ = near_pairs(sub, radius)
    same = np.array_equal(components(subset, si, sj), components(subset, np.concatenate(bi), np.concatenate(bj)))
    brute_est = brute_sub * (n / subset) ** 2
    return {"n": n, "radius": radius, "near_pairs_s": round(mih, 3), "pairs": int(len(i)),
            "all_pairs_subset": subset, "all_pairs_subset_s": round(brute_sub, 3),
            "all_pairs_estimated_s": round(brute_est, 1), "speedup_vs_all_pairs": round(brute_est / mih, 1),
            "components_equal_on_subset": bool(same)}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    bases = 10 if quick else 40
    data, family, kinds = labelled_set(bases, (1000, 1400) if quick else (1200, 2000))
    originals = [d for d, k in zip(data, kinds) if k == "original"]
    hashes, near_cost, colours = _hash_all(data, exact=False)
    costs = {}
    for fmt, files in (("png", originals), ("jpeg", [_encode(Image.open(io.BytesIO(d)), "JPEG", quality=92) for d in originals])):
        stage = _stage_cost(files)
        costs[fmt] = {"near_hash_ms": _hash_all(files, exact=False)[1] * 1e3, "exact_hash_ms": _hash_all(files, exact=True)[1] * 1e3,
                      "image_stage_ms": stage * 1e3}
        costs[fmt] = {k: round(v, 2) for k, v in costs[fmt].items()}
        costs[fmt]["near_to_stage"] = round(costs[fmt]["near_hash_ms"] / costs[fmt]["image_stage_ms"], 4)
        costs[fmt]["exact_to_stage"] = round(costs[fmt]["exact_hash_ms"] / costs[fmt]["image_stage_ms"], 4)
    rows = precision_recall(hashes, np.array(family), kinds)
    combined = colour_rule(hashes, colours, np.array(family), (6, 8), (10, 12, 14), 0.3)
    best = max(rows, key=lambda r: (r["f1"], -r["threshold"]))
    chosen = best["threshold"]
    print(f"labelled set: {len(data)} images from {bases} originals "
          f"({sum(k.startswith('hard') for k in kinds)} hard negatives); pairs scored: {len(data) * (len(data) - 1) // 2}")
    print("  t  precision  recall    f1   false pairs (hard negatives)")
    for r in rows:
        mark = "  <- best F1" if r["threshold"] == chosen else ""
        print(f" {r['threshold']:2d}   {r['precision']:.4f}   {r['recall']:.4f}  {r['f1']:.4f}  "
              f"{r['false_pairs']:5d} ({r['hard_negative_false_pairs']}){mark}")
    print("phash <= t, or phash <= w and colour L1 <= 0.3 (colour_threshold = w):")
    for r in combined:
        print(f"  t={r['threshold']:2d} w={r['colour_threshold']:2d}  precision {r['precision']:.4f}  recall "
              f"{r['recall']:.4f}  f1 {r['f1']:.4f}  false pairs {r['false_pairs']}")
    baseline = _imagehash_all(data)
    if baseline is None:
        print("imagehash not installed: no baseline (pip install imagehash)")
        versus = None
    else:
        ih_rows = precision_recall(baseline[0], np.array(family), kinds)
        ih_best = max(ih_rows, key=lambda r: (r["f1"], -r["threshold"]))
        versus = {"imagehash_best": ih_best, "imagehash_ms_per_image": round(baseline[1] * 1e3, 2),
                  "ours_best": best, "ours_ms_per_image": round(near_cost * 1e3, 2),
                  "speedup": round(baseline[1] / near_cost, 2)}
        print(f"baseline imagehash.phash: best F1 {ih_best['f1']:.4f} at t={ih_best['threshold']} (precision "
              f"{ih_best['precision']:.4f}, recall {ih_best['recall']:.4f}), {baseline[1] * 1e3:.1f} ms/image; ours: "
              f"F1 {best['f1']:.4f} at t={chosen}, {near_cost * 1e3:.1f} ms/image -> {versus['speedup']}x faster")
    by_kind = recall_by_kind(hashes, np.array(family), kinds, chosen)
    print(f"recall per copy kind at t={chosen}: {by_kind}")
    print(f"recipe default DedupConfig().threshold = {DedupConfig().threshold}")
    for fmt, c in costs.items():
        print(f"cost per original as {fmt.upper()} (CPU, one core): near hash {c['near_hash_ms']:.1f} ms, exact hash "
              f"{c['exact_hash_ms']:.1f} ms, image stage {c['image_stage_ms']:.1f} ms -> near/stage {c['near_to_stage']:.3f}, "
              f"exact/stage {c['exact_to_stage']:.3f}")
    scale = search_scaling(20_000 if quick else 200_000, 5_000 if quick else 20_000, chosen)
    wide = search_scaling(20_000 if quick else 50_000, 5_000 if quick else 10_000, 12)
    print(f"search: near_pairs over {scale['n']:,} hashes (r={scale['radius']}) {scale['near_pairs_s']} s vs all pairs "
          f"~{scale['all_pairs_estimated_s']} s (measured on {scale['all_pairs_subset']:,}: "
          f"{scale['all_pairs_subset_s']} s) -> {scale['speedup_vs_all_pairs']}x; components equal: "
          f"{scale['components_equal_on_subset']}")
    print(f"search at r=12 (colour_threshold 12) over {wide['n']:,} hashes: {wide['near_pairs_s']} s, {wide['speedup_vs_all_pairs']}x over all pairs")
    write_results("dedup", {
        "quick": quick, "images": len(data), "originals": bases, "thresholds": rows, "chosen_threshold": chosen,
        "recall_by_kind_at_chosen": by_kind, "recipe_default_threshold": DedupConfig().threshold,
        "near_hash_ms_all_images": round(near_cost * 1e3, 2), "cost_per_original": costs,
        "search": scale, "search_r12": wide, "colour_rule": combined, "versus_imagehash": versus,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
