"""Caption variants and token counts beside today's caption run, same DB, interleaved rounds.

`python benchmarks/bench_variants.py [--posts 200000] [--rounds 3] [--base-tree PATH]`: a `kdata
sample` DB made once under benchmarks/.cache/, then per round, in this order:

- `cli_old`: `kdata caption --query "" --out x.parquet`, whole process, with the code of
  `--base-tree` (a worktree of the code before variants, e.g. `git worktree add /tmp/b 1b90f5b`);
- `cli_new`: the same with this tree (the outputs must be the same bytes);
- in this process, through `iter_captions`: `base` (default recipe, no token columns), `tokens`
  (the same with `variants=True`: kohaku variant + its exact CLIP count, what builds store), and
  `extra3` (3 more variants: noobai and anima orders, xml).

Prints the best of each, the cost per extra variant as a share of `base`, the token counting
rate (posts / CPU seconds of tokens - base: captions per core-second, cold per-job cache
included); wall and CPU seconds of every run; writes benchmarks/results/variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _run(db, config, variants: bool | None = None) -> tuple[float, pl.DataFrame]:
    from kohaku_data.captions import compute_thresholds, iter_captions

    start, cpu = time.perf_counter(), time.process_time()
    frames = list(iter_captions(db, config, compute_thresholds(db, config), variants=variants))
    return (time.perf_counter() - start, time.process_time() - cpu), pl.concat(frames)


def _cli(db: Path, tree: Path, out: Path) -> tuple[float, float]:
    """Whole `kdata caption` process with the package of `tree`."""
    code = ("import sys; from kohaku_data.cli import app; "
            f"sys.argv = ['kdata', 'caption', '--db', {str(db)!r}, '--query', '', '--out', {str(out)!r}]; app()")
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, cwd="/tmp",
                   env={**os.environ, "PYTHONPATH": str(tree)})
    return time.perf_counter() - start, _children_cpu() - cpu


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-tree", type=Path, default=None, help="worktree of the code before variants")
    args = parser.parse_args()
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    base, extra = CaptionConfig(), CaptionConfig(variants=EXTRA)
    names = ["cli_old", "cli_new", "base", "tokens", "extra3"] if args.base_tree else ["cli_new", "base", "tokens", "extra3"]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    path = _db(args.posts)
    outs = {k: Path(f"/tmp/bench_variants_{k}.parquet") for k in ("cli_old", "cli_new")}
    with DanbooruDB.open(path, readonly=True) as db:
        for _ in range(args.rounds):
            if args.base_tree:
                times["cli_old"].append(_cli(path.resolve(), args.base_tree, outs["cli_old"]))
            times["cli_new"].append(_cli(path.resolve(), ROOT, outs["cli_new"]))
            times["base"].append(_run(db, base)[0])
            t, frame = _run(db, base, variants=True)
            times["tokens"].append(t)
            t, _f = _run(db, extra)
            times["extra3"].append(t)
    same = outs["cli_old"].read_bytes() == outs["cli_new"].read_bytes() if args.base_tree else None
    best = {k: min(w for w, _ in v) for k, v in times.items()}
    cpu = {k: min(c for _, c in v) for k, v in times.items()}
    counts = frame["tokens_kohaku"].to_numpy()
    result = {
        "posts": frame.height, "rounds": args.rounds, "seconds_wall_cpu": times, "best_wall_s": best, "best_cpu_s": cpu,
        "cli_same_bytes_as_old": same,
        "extra_variant_cost_share_of_base_wall": (best["extra3"] - best["tokens"]) / 3 / best["base"],
        "extra_variant_cost_share_of_base_cpu": (cpu["extra3"] - cpu["tokens"]) / 3 / cpu["base"],
        "token_count_captions_per_cpu_s": frame.height / max(cpu["tokens"] - cpu["base"], 1e-9),
        "mean_tokens_kohaku": float(counts.mean()),
        "share_past": {w: float((counts > w).mean()) for w in (75, 150, 225)},
    }
    out = ROOT / "benchmarks" / "results" / "variants.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
