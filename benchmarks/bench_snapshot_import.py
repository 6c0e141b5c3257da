"""Benchmark: parquet snapshot import vs the JSONL import of the same records, same run, one core.

    .venv/bin/python benchmarks/bench_snapshot_import.py [--quick] [--posts N] [--rounds R]
    .venv/bin/python benchmarks/bench_snapshot_import.py --posts N --write-parquet OUT.parquet

`--write-parquet` only writes the N-post danbooru2026-shaped file (for timing `kdata db import`
on it as a user runs it, e.g. under `/usr/bin/time -v` for peak RSS at millions of rows) and exits.

Generates N API posts (bench_import's generator: ~30 tags each by popularity from the top-20k
list), writes them as JSONL and as a danbooru2026-shaped parquet file (flat API columns, row
groups of 100k rows), and imports each into a fresh DB in a child process of its own (its peak
RSS is the figure: the parquet import must stay bounded at any size), alternating formats for
R rounds so that machine load hits both alike. Also times a rerun of the parquet file (every
row unchanged). Writes benchmarks/results/snapshot_import.json.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core, as bench_import
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.baseline import extract_tree  # noqa: E402
from benchmarks.bench_captions import status_bytes  # noqa: E402
from benchmarks.report import write_results  # noqa: E402


def child(path: Path, db_path: Path, rerun: bool) -> None:
    """Import `path` into `db_path` and print timing and peak RSS as JSON (one core). Run with
    the working directory (and sys.path) of the code to measure: `--baseline` runs it on
    another commit's tree."""
    sys.path.insert(0, os.getcwd())
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.importer import import_files
    try:
        from kohaku_data.keepers import SUMMARY_KEEPERS
        keep = {"keepers": SUMMARY_KEEPERS}
    except ImportError:  # a baseline from before keepers.py: its import refreshed every summary itself
        keep = {}

    db = DanbooruDB.open(db_path) if rerun else DanbooruDB.create(db_path)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = import_files(db, [path], **keep)  # the default batch (10k rows) for both: measured best for both
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    db.close()
    print(json.dumps({
        "wall_s": wall, "cpu_s": cpu, "index_s": summary.index_seconds, "rejected": summary.rejected,
        "inserted": summary.posts.inserted, "unchanged": summary.posts.unchanged, "updated": summary.posts.updated,
        # VmHWM, not ru_maxrss: Linux keeps that across exec, so this child would report the
        # benchmark's own RSS at the fork
        "peak_rss_mb": status_bytes("self", "VmHWM") / 2**20,
    }))


def floor_child(src: Path, dst: Path) -> None:
    """sqlite's own cost of the rows the import wrote: tables copied in C (INSERT ... SELECT in
    the import's row order) with the import's pragmas, triggers and deferred indexes (rebuilt),
    plus the summary refresh every import ends with; CPU seconds, one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db import summary as db_summary
    from kohaku_data.db.importer import IMPORT_CACHE_KIB, retire_row_triggers
    from kohaku_data.db.migrate import defer_indexes, migrate, restore_deferred_indexes
    from kohaku_data.keepers import SUMMARY_KEEPERS

    db = DanbooruDB.create(dst)
    migrate(db)
    conn = db.connection()
    conn.execute(f"PRAGMA cache_size = {-IMPORT_CACHE_KIB}")
    conn.execute(f"ATTACH DATABASE '{src}' AS src")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with db_summary.suspended(db):
        defer_indexes(db)
        retire_row_triggers(db)
        with db.database.atomic():
            for table in ("tag", "post", "posttagrelation"):
                conn.execute(f"INSERT INTO main.{table} SELECT * FROM src.{table} ORDER BY id")
        restore_deferred_indexes(db)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    cpu1 = time.process_time()
    db_summary.refresh(db, SUMMARY_KEEPERS)
    refresh = time.process_time() - cpu1
    db.close()
    print(json.dumps({"sqlite_cpu_s": cpu, "sqlite_wall_s": wall, "refresh_cpu_s": refresh}))


def run_child(path: Path, db_path: Path, rerun: bool = False, code: Path = ROOT) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), str(db_path)] + (["--rerun"] if rerun else [])
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=code, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def to_parquet(jsonl: Path, out: Path) -> None:
    """The same records as a danbooru2026-shaped file: flat API columns, 100k-row groups."""
    import polars as pl

    pl.scan_ndjson(jsonl, infer_schema_length=1000).sink_parquet(out, row_group_size=100_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k posts, one round")
    parser.add_argument("--posts", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also run the JSONL import with this commit's code (git archive), same rounds")
    parser.add_argument("--write-parquet", type=Path, default=None, metavar="OUT",
                        help="only write the N-post snapshot-shaped parquet file to OUT and exit")
    args = parser.parse_args()
    n = args.posts or (50_000 if args.quick else 500_000)
    if args.write_parquet:
        from benchmarks.bench_import import generate

        with tempfile.TemporaryDirectory(dir=args.write_parquet.parent) as tmp:
            t0 = time.perf_counter()
            generate(Path(tmp) / "posts.jsonl", n)
            to_parquet(Path(tmp) / "posts.jsonl", args.write_parquet)
        print(f"{n:,} posts -> {args.write_parquet} ({args.write_parquet.stat().st_size / 1e6:,.0f} MB) "
              f"in {time.perf_counter() - t0:.0f} s")
        return
    rounds = args.rounds or (1 if args.quick else 2)
    from benchmarks.bench_import import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jsonl, parquet = tmp / "posts.jsonl", tmp / "posts.parquet"
        t0 = time.perf_counter()
        generate(jsonl, n)
        to_parquet(jsonl, parquet)
        gen_s = time.perf_counter() - t0
        ujsonl, uparquet = tmp / "updates.jsonl", tmp / "updates.parquet"
        updates(jsonl, ujsonl, uparquet)
        kinds = [("jsonl", jsonl, ROOT), ("parquet", parquet, ROOT)]
        if args.baseline:
            base = tmp / "baseline"
            extract_tree(args.baseline, base)
            kinds.insert(0, ("jsonl_baseline", jsonl, base))
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in kinds}
        for r in range(rounds):
            for name, path, code in kinds:
                db = tmp / f"{name}{r}.db"
                res = run_child(path, db, code=code)
                assert res["inserted"] == n and res["rejected"] == 0, res
                runs[name].append(res)
                print(f"  round {r + 1} {name:15} {n / res['wall_s']:>10,.0f} posts/s wall, "
                      f"{n / res['cpu_s']:>10,.0f}/CPU-s, peak RSS {res['peak_rss_mb']:,.0f} MB", flush=True)
        same = _same_rows(tmp / "jsonl0.db", tmp / "parquet0.db")
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--floor", str(tmp / "parquet0.db"),
                              str(tmp / "floor.db")], check=True, capture_output=True, text=True, cwd=ROOT).stdout
        floor = json.loads(out.strip().splitlines()[-1])
        print(f"  floor: sqlite alone {floor['sqlite_cpu_s']:.2f} CPU-s + summary refresh "
              f"{floor['refresh_cpu_s']:.2f} CPU-s", flush=True)
        rerun = run_child(parquet, tmp / "parquet0.db", rerun=True)
        assert rerun["unchanged"] == n, rerun
        # Incremental: every post again with a newer updated_at and one tag changed, over the
        # DB the first JSONL round wrote (a copy per run), JSONL vs parquet, alternating.
        for r in range(rounds):
            for name, path, code in [(f"update_{k}", {"jsonl": ujsonl, "parquet": uparquet}[k.split("_")[0]], c)
                                     for k, _, c in kinds]:
                db = tmp / f"{name}{r}.db"
                shutil.copyfile(tmp / "jsonl0.db", db)
                res = run_child(path, db, rerun=True, code=code)
                assert res["updated"] == n and res["rejected"] == 0, res
                runs.setdefault(name, []).append(res)
                print(f"  round {r + 1} {name:15} {n / res['wall_s']:>10,.0f} posts/s wall, "
                      f"{n / res['cpu_s']:>10,.0f}/CPU-s, peak RSS {res['peak_rss_mb']:,.0f} MB", flush=True)
        same_updates = _same_rows(tmp / "update_jsonl0.db", tmp / "update_parquet0.db")
        sizes = {"jsonl_mb": jsonl.stat().st_size / 1e6, "parquet_mb": parquet.stat().st_size / 1e6}

    def best(name: str, key: str) -> float:
        return min(r[key] for r in runs[name])

    result = {
        "posts": n, "rounds": rounds, "generate_s": round(gen_s, 1), **{k: round(v, 1) for k, v in sizes.items()},
        "parquet_posts_per_s": round(n / best("parquet", "wall_s")),
        "jsonl_posts_per_s": round(n / best("jsonl", "wall_s")),
        "parquet_posts_per_cpu_s": round(n / best("parquet", "cpu_s")),
        "jsonl_posts_per_cpu_s": round(n / best("jsonl", "cpu_s")),
        "ratio_wall": round(best("jsonl", "wall_s") / best("parquet", "wall_s"), 2),
        "ratio_cpu": round(best("jsonl", "cpu_s") / best("parquet", "cpu_s"), 2),
        "parquet_index_rebuild_s": round(best("parquet", "index_s"), 2),
        "parquet_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["parquet"])),
        "jsonl_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["jsonl"])),
        "parquet_rerun_posts_per_s": round(n / rerun["wall_s"]),
        "same_rows_as_jsonl": same, "same_rows_after_updates": same_updates,
        "floor_sqlite_cpu_s": round(floor["sqlite_cpu_s"], 2), "floor_refresh_cpu_s": round(floor["refresh_cpu_s"], 2),
        "floor_posts_per_cpu_s": round(n / (floor["sqlite_cpu_s"] + floor["refresh_cpu_s"])),
        "parquet_cpu_s": round(best("parquet", "cpu_s"), 2), "jsonl_cpu_s": round(best("jsonl", "cpu_s"), 2),
        "update_parquet_posts_per_cpu_s": round(n / best("update_parquet", "cpu_s")),
        "update_jsonl_posts_per_cpu_s": round(n / best("update_jsonl", "cpu_s")),
        "update_parquet_posts_per_s": round(n / best("update_parquet", "wall_s")),
        "update_jsonl_posts_per_s": round(n / best("update_jsonl", "wall_s")),
        **({"baseline": args.baseline,
            "jsonl_baseline_posts_per_cpu_s": round(n / best("jsonl_baseline", "cpu_s")),
            "jsonl_baseline_posts_per_s": round(n / best("jsonl_baseline", "wall_s")),
            "ratio_cpu_vs_baseline_jsonl": round(best("jsonl_baseline", "cpu_s") / best("parquet", "cpu_s"), 2),
            "ratio_wall_vs_baseline_jsonl": round(best("jsonl_baseline", "wall_s") / best("parquet", "wall_s"), 2),
            "update_jsonl_baseline_posts_per_cpu_s": round(n / best("update_jsonl_baseline", "cpu_s")),
            "update_ratio_cpu_vs_baseline_jsonl": round(best("update_jsonl_baseline", "cpu_s")
                                                         / best("update_parquet", "cpu_s"), 2),
            } if args.baseline else {}),
        "target_ratio": 2.0, "target_peak_rss_mb_at_12m": 1536, "cores": 1,
        "python": platform.python_version(), "machine": platform.machine(),
    }
    print(f"{n:,} posts: parquet {result['parquet_posts_per_s']:,}/s vs JSONL {result['jsonl_posts_per_s']:,}/s "
          f"(x{result['ratio_wall']} wall, x{result['ratio_cpu']} CPU); peak RSS parquet "
          f"{result['parquet_peak_rss_mb']} MB, JSONL {result['jsonl_peak_rss_mb']} MB; same rows: {same}")
    write_results("snapshot_import", result)


def updates(jsonl: Path, out_jsonl: Path, out_parquet: Path) -> None:
    """Every post again, newer (updated_at in 2030), its first general tag replaced by another."""
    import polars as pl

    df = pl.read_ndjson(jsonl, infer_schema_length=1000).with_columns(
        updated_at=pl.lit("2030-01-01T00:00:00.000+00:00"),
        tag_string_general=pl.col("tag_string_general").str.replace(r"^\S+", "bench_changed_tag"),
    )
    df = df.with_columns(tag_string=pl.concat_str(
        [pl.col(c) for c in ("tag_string_general", "tag_string_artist", "tag_string_character",
                             "tag_string_copyright", "tag_string_meta")], separator=" "))
    df.write_ndjson(out_jsonl)
    df.write_parquet(out_parquet, row_group_size=100_000)


def _same_rows(a: Path, b: Path) -> bool:
    from tests.test_db_import import dump

    return dump(a) == dump(b)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--floor":
        floor_child(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]), rerun="--rerun" in sys.argv)
    else:
        main()
