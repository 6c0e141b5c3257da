"""Caption variants and token counts beside today's caption run, same DB, interleaved rounds.

`python benchmarks/bench_variants.py [--posts 200000] [--rounds 3] [--base-tree PATH]
[--variants-tree PATH]`: a `kdata sample` DB made once under benchmarks/.cache/, then per round,
in this order:

- `cli_old`: `kdata caption --query "" --out x.parquet`, whole process, with the code of
  `--base-tree` (a worktree of the code before variants, e.g. `git worktree add /tmp/b 1b90f5b`);
- `cli_new`: the same with this tree (the outputs must be the same bytes);
- each in a process of its own (CPU seconds of `iter_captions` alone, measured in that
  process), with this tree and, given `--variants-tree` (e.g. `git archive <rev> kohaku_data`
  unpacked), with that one: `base` (default recipe, no token columns), `tokens` (the same with
  `variants=True`: kohaku variant + its exact CLIP count, what builds store), `extra3` (3 more
  variants: noobai and anima orders, xml), and `count`: the kohaku token counting alone
  (`piece_tokens` over the pages' elements, strings already built), cold (fresh per-job cache:
  every distinct tag through the BPE) and warm (the same pages again), with the cache hit rates.

`--refresh DB` instead times the caption summary refresh of a migrated DB: this tree (kohaku
counts + xml/`@` forms), `--variants-tree`, and this tree storing no counts, interleaved.

Prints the best of each, the cost per extra variant as a share of `base`, the token counting
rate (posts / CPU seconds of tokens - base: captions per core-second, cold per-job cache
included); wall and CPU seconds of every run; writes benchmarks/results/variants.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
EXTRA = {"add": [{"name": "noob", "kind": "ordered", "order": "noobai"},
                 {"name": "anima", "kind": "ordered", "order": "anima", "artist_prefix": "@"},
                 {"name": "xml", "kind": "xml", "order": "animagine4"}]}


def _db(posts: int, migrated: bool = False) -> Path:
    """The sample DB; `migrated`: a copy after `kdata db migrate` (its summaries refreshed: the
    prepared tag table with its token counts, as every imported or migrated DB has them)."""
    folder = ROOT / "benchmarks" / ".cache" / f"variants-{posts}"
    kdata = str(Path(sys.executable).with_name("kdata"))
    if not (folder / "danbooru.db").is_file():
        subprocess.run([kdata, "sample", str(folder), "--posts", str(posts), "--no-images"], check=True,
                       stdout=subprocess.DEVNULL)
    if not migrated:
        return folder / "danbooru.db"
    copy = folder.with_name(folder.name + "-migrated") / "danbooru.db"
    if not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "danbooru.db", copy.with_suffix(".tmp"))
        cpu = _children_cpu()
        subprocess.run([kdata, "db", "migrate", "--db", str(copy.with_suffix(".tmp"))], check=True, stdout=subprocess.DEVNULL)
        print(f"migrated copy (summaries, token counts included): {_children_cpu() - cpu:.1f} CPU s", file=sys.stderr)
        copy.with_suffix(".tmp").rename(copy)
    return copy


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


def _child(tree: Path, db: Path, kind: str) -> dict:
    """One in-process measurement (`kind`) in a fresh process importing the package of `tree`."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--child-db", str(db)],
                         capture_output=True, text=True, cwd="/tmp", env={**os.environ, "PYTHONPATH": str(tree)})
    if out.returncode:
        raise SystemExit(f"{kind} with {tree} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(kind: str, path: Path) -> None:
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    if kind.startswith("refresh"):
        from kohaku_data.captions import summaries

        if kind == "refresh_nocount":  # the same refresh storing no token counts
            summaries._count_used_rows = lambda *a, **k: None
        with DanbooruDB.open(path) as db:
            start, cpu = time.perf_counter(), time.process_time()
            summaries.refresh_caption_summaries(db)
            print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}))
        return
    with DanbooruDB.open(path, readonly=True) as db:
        if kind == "count":
            print(json.dumps(_count(db)))
            return
        config = CaptionConfig(variants=EXTRA) if kind == "extra3" else CaptionConfig()
        (wall, cpu), frame = _run(db, config, True if kind == "tokens" else None)
        print(json.dumps({"wall": wall, "cpu": cpu, "posts": frame.height,
                          "mean_tokens_kohaku": float(frame["tokens_kohaku"].mean()) if kind != "base" else None}))


def _count(db) -> dict:
    """The kohaku token count alone: `piece_tokens` over every page's elements, cold then warm."""
    from kohaku_data.captions import _tag_source, compute_thresholds, fetch_pages
    from kohaku_data.captions.frame import parse_page
    from kohaku_data.captions.layout import ChunkRows, caption_elements, resolve_tags
    from kohaku_data.captions.variants import TokenCounter, _kohaku_pieces, piece_tokens
    from kohaku_data.captions.tokens import ClipTokenizer
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db.pages import open_reader

    config = CaptionConfig()
    thresholds = compute_thresholds(db, config)
    conn = open_reader(db.path)
    table = _tag_source(conn, True, config).lookup(None)
    pages = []
    with fetch_pages(db, config) as fetched:
        for raw in fetched:
            if raw.count:
                posts, rel = parse_page(raw)
                pi, rel = rel.of_posts(posts["id"].to_numpy())
                found, ti = resolve_tags(table, rel.tag_id)
                _frame, pi, row = caption_elements(posts, table, ChunkRows(pi, ti, rel.rid).take(found), config, thresholds)
                pages.append((pi, row, posts.height))
    counter = TokenCounter(ClipTokenizer())
    from kohaku_data.captions.variants import Elements

    out: dict = {"posts": sum(n for _, _, n in pages)}
    for name in ("cold", "warm"):
        cpu = time.process_time()
        for pi, row, n in pages:
            piece_tokens(_kohaku_pieces(Elements(pi, row, table, n), config), table, counter, n)
        out[name] = time.process_time() - cpu
    out["stats"] = counter.stats()
    return out


def _refresh_main(args) -> None:
    """Caption summary refresh of a migrated DB (e.g. `kdata sample --tail-tags 1000000`, then
    `kdata db migrate`): the refresh as this tree stores it (kohaku counts + xml/`@` forms), as
    --variants-tree does, and this tree's without any counts; each a process of its own,
    interleaved, this tree's last (the DB keeps its summaries)."""
    runs = [("nocount", ROOT, "refresh_nocount"), *((("before", args.variants_tree, "refresh"),) if args.variants_tree else ()),
            ("now", ROOT, "refresh")]
    times: dict[str, list] = {name: [] for name, _, _ in runs}
    for _ in range(args.rounds):
        for name, tree, kind in runs:
            got = _child(tree, args.refresh.resolve(), kind)
            times[name].append((got["wall"], got["cpu"]))
            print(name, got, file=sys.stderr)
    result = {"db": str(args.refresh), "rounds": args.rounds, "seconds_wall_cpu": times,
              "best_cpu_s": {k: min(c for _, c in v) for k, v in times.items()}}
    out = ROOT / "benchmarks" / "results" / "variants-refresh.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-tree", type=Path, default=None, help="worktree of the code before variants")
    parser.add_argument("--migrated", action="store_true", help="on a migrated copy (DB summaries refreshed)")
    parser.add_argument("--variants-tree", type=Path, default=None, help="tree of earlier variant code to compare")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-db", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--refresh", type=Path, default=None,
                        help="a migrated DB: time the caption summary refresh (refresh_caption_summaries) "
                             "with this tree, --variants-tree, and this tree storing no counts, interleaved")
    parser.add_argument("--quick", action="store_true", help="make bench QUICK=1: 50k posts, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.posts, args.rounds = min(args.posts, 50_000), 1
    if args.child:
        _child_main(args.child, args.child_db)
        return
    if args.refresh:
        _refresh_main(args)
        return
    trees = {"now": ROOT, **({"before": args.variants_tree} if args.variants_tree else {})}
    kinds = ("base", "tokens", "extra3")
    times: dict[str, list] = {k: [] for k in ("cli_old", "cli_new") if k == "cli_new" or args.base_tree}
    times.update({f"{t}.{k}": [] for t in trees for k in (*kinds, "count")})
    path = _db(args.posts, args.migrated).resolve()
    outs = {k: Path(f"/tmp/bench_variants_{k}.parquet") for k in ("cli_old", "cli_new")}
    means = {}
    for _ in range(args.rounds):
        if args.base_tree:
            times["cli_old"].append(_cli(path, args.base_tree, outs["cli_old"]))
        times["cli_new"].append(_cli(path, ROOT, outs["cli_new"]))
        for tree_name, tree in trees.items():
            for kind in kinds:
                got = _child(tree, path, kind)
                times[f"{tree_name}.{kind}"].append((got["wall"], got["cpu"]))
                if got["mean_tokens_kohaku"] is not None:
                    means[tree_name] = got["mean_tokens_kohaku"]
            times[f"{tree_name}.count"].append(_child(tree, path, "count"))
    same = outs["cli_old"].read_bytes() == outs["cli_new"].read_bytes() if args.base_tree else None
    per_tree = {}
    for t in trees:
        cpu = {k: min(c for _, c in times[f"{t}.{k}"]) for k in kinds}
        counts = times[f"{t}.count"]
        posts = counts[0]["posts"]
        per_tree[t] = {
            "best_cpu_s": cpu,
            "extra_variant_cost_share_of_base_cpu": (cpu["extra3"] - cpu["tokens"]) / 3 / cpu["base"],
            "tokens_minus_base_captions_per_cpu_s": posts / max(cpu["tokens"] - cpu["base"], 1e-9),
            "count_alone_cold_cpu_s": min(c["cold"] for c in counts), "count_alone_warm_cpu_s": min(c["warm"] for c in counts),
            "count_alone_cold_captions_per_cpu_s": posts / min(c["cold"] for c in counts),
            "count_alone_warm_captions_per_cpu_s": posts / min(c["warm"] for c in counts),
            "cache_stats": counts[-1]["stats"], "mean_tokens_kohaku": means.get(t),
        }
    result = {
        "posts": posts, "rounds": args.rounds, "migrated": args.migrated, "seconds_wall_cpu": times, "cli_same_bytes_as_old": same,
        "cli_best_cpu_s": {k: min(c for _, c in times[k]) for k in ("cli_old", "cli_new") if k in times},
        "trees": {k: str(v) for k, v in trees.items()}, "per_tree": per_tree,
    }
    out = ROOT / "benchmarks" / "results" / ("variants-migrated.json" if args.migrated else "variants.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
