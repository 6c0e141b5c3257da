"""Caption variants and token counts beside today's caption run, same DB, same process, interleaved.

`python benchmarks/bench_variants.py [--posts 200000] [--rounds 3]`: a `kdata sample` DB made
once under benchmarks/.cache/, then per round: captions of every post with the default recipe
(one variant, kohaku, with its exact CLIP token count), then with 3 extra variants (noobai and
anima orders, xml), both through `iter_captions` (the path of `kdata caption` and builds).
Prints the best of each, the cost per extra variant, the token counter's rate on the final
strings (captions/s, one core) and its cache hit rates; writes benchmarks/results/variants.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
EXTRA = {"add": [{"name": "noob", "kind": "ordered", "order": "noobai"},
                 {"name": "anima", "kind": "ordered", "order": "anima", "artist_prefix": "@"},
                 {"name": "xml", "kind": "xml", "order": "animagine4"}]}


def _db(posts: int) -> Path:
    folder = ROOT / "benchmarks" / ".cache" / f"variants-{posts}"
    if not (folder / "danbooru.db").is_file():
        subprocess.run([str(Path(sys.executable).with_name("kdata")), "sample", str(folder), "--posts", str(posts),
                        "--no-images"], check=True, stdout=subprocess.DEVNULL)
    return folder / "danbooru.db"


def _run(db, config) -> tuple[float, pl.DataFrame]:
    from kohaku_data.captions import compute_thresholds, iter_captions

    start = time.perf_counter()
    frames = list(iter_captions(db, config, compute_thresholds(db, config)))
    return time.perf_counter() - start, pl.concat(frames)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from kohaku_data.captions.tokens import ClipTokenizer
    from kohaku_data.captions.variants import TokenCounter
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    base, extra = CaptionConfig(), CaptionConfig(variants=EXTRA)
    times: dict[str, list[float]] = {"base": [], "extra3": []}
    with DanbooruDB.open(_db(args.posts), readonly=True) as db:
        for _ in range(args.rounds):
            t, _f = _run(db, base)
            times["base"].append(t)
            t, frame = _run(db, extra)
            times["extra3"].append(t)
    best = {k: min(v) for k, v in times.items()}
    counter = TokenCounter(ClipTokenizer())
    texts = frame["variant_kohaku"]
    cold = time.perf_counter()
    counter.column(texts)
    cold = time.perf_counter() - cold
    warm = time.perf_counter()
    counts = counter.column(texts)
    warm = time.perf_counter() - warm
    result = {
        "posts": frame.height, "rounds": args.rounds, "caption_s": times,
        "best_base_s": best["base"], "best_with_3_extra_s": best["extra3"],
        "extra_variant_cost_share_of_base": (best["extra3"] - best["base"]) / 3 / best["base"],
        "token_count_cold_captions_per_s": frame.height / cold, "token_count_warm_captions_per_s": frame.height / warm,
        "mean_tokens_kohaku": float(counts.mean()), "counter": counter.stats(),
        "share_past": {w: float((counts > w).mean()) for w in (75, 150, 225)},
    }
    out = ROOT / "benchmarks" / "results" / "variants.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
