"""Benchmark: peak memory and CPU seconds of each summary keeper alone (what `kdata db import` and
`kdata db migrate` run after their writes), each in a fresh child process.

    .venv/bin/python benchmarks/bench_keepers.py [--quick] [--db PATH] [--posts N] [--rounds R] [--baseline REF]

Runs every keeper of kohaku_data.keepers.SUMMARY_KEEPERS on `--db` (default: a `kdata sample
--posts N --no-images --migrate` DB made once in benchmarks/.cache; 200k posts, 50k with
`--quick`) after marking what it keeps stale (the query bitmap index invalid, the post tag
blocks incomplete, the source trigram triggers dropped, the write counter bumped), so each does
its whole work. The figures: the peak of the child's anonymous RSS (RssAnon, sampled every 20
ms; the imports alone are ~45 MiB, see `anon_start_mib`), and the CPU seconds of the keeper
call. Several sizes (e.g. 200k and 1M posts) give the per-post slope the keepers add at full
size: the import's peak memory must stay bounded at 12M posts. `--baseline REF` runs the same
with REF's kohaku_data (git archive) on the same DB and prints both. Writes
benchmarks/results/keepers.json.

The keepers store what they compute in the DB: use a DB you can spare (a copy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.baseline import extract_tree  # noqa: E402
from benchmarks.bench_captions import AnonPeak, anon_bytes  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
# What the keepers of any version read as "rebuild me" (the SQL works on every layout).
STALE_SQL = ("UPDATE kdata_query_bits_state SET value = 0 WHERE key = 'valid'",
             "DELETE FROM kdata_post_tags_state WHERE key = 'complete'",
             "UPDATE kdata_write_counter SET writes = writes + 1")


def child_list() -> None:
    sys.path.insert(0, os.getcwd())
    from kohaku_data.keepers import SUMMARY_KEEPERS

    print(json.dumps([k.__name__ for k in SUMMARY_KEEPERS]))


def child(name: str, db_path: Path) -> None:
    """Run keeper `name` of the code in the working directory on `db_path`, its work made stale
    first; print its figures as JSON."""
    sys.path.insert(0, os.getcwd())
    from kohaku_data.db import DanbooruDB
    from kohaku_data.keepers import SUMMARY_KEEPERS

    keeper = next((k for k in SUMMARY_KEEPERS if k.__name__ == name), None)
    if keeper is None:
        print(json.dumps({"absent": True}))
        return
    db = DanbooruDB.open(db_path)
    _make_stale(db)
    time.sleep(0.1)  # settle: the sampler starts from what is held now
    start = anon_bytes(os.getpid())
    with AnonPeak(every=0.02) as sampler:  # not 5 ms: the sampler's CPU counts in the keeper's
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stored = keeper(db)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak = max(sampler.peak, start, anon_bytes(os.getpid()))
    db.close()
    print(json.dumps({"stored": stored, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                      "anon_peak_mib": round(peak / 2**20), "anon_start_mib": round(start / 2**20)}))


def _make_stale(db) -> None:
    conn = db.connection()
    for sql in STALE_SQL:
        try:
            conn.execute(sql)
        except sqlite3.OperationalError:  # not migrated that far
            pass
    conn.commit()
    try:
        from kohaku_data.db import source_trigrams
    except ImportError:  # a version before it
        return
    source_trigrams.retire(db)


def run_child(args: list[str], code: Path) -> object:
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], check=True,
                         capture_output=True, text=True, cwd=code, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def sample_db(posts: int) -> Path:
    """benchmarks/.cache/keepers-<posts>/danbooru.db, made once with `kdata sample`."""
    out = CACHE / f"keepers-{posts}"
    path = out / "danbooru.db"
    if not path.exists():
        kdata = Path(sys.executable).with_name("kdata")
        subprocess.run([str(kdata), "sample", str(out), "--posts", str(posts), "--no-images", "--migrate"],
                       check=True, cwd=ROOT)
    return path


def measure(names: list[str], db: Path, code: Path, rounds: int) -> dict[str, dict]:
    """Each keeper `rounds` times; the lowest figures of the rounds (machine load adds, never
    takes away)."""
    out: dict[str, dict] = {}
    for name in names:
        runs = [run_child(["--child", name, str(db)], code) for _ in range(rounds)]
        if runs[0].get("absent"):
            out[name] = {"absent": True}
            continue
        best = min(runs, key=lambda r: r["anon_peak_mib"])
        out[name] = {**best, "cpu_s": min(r["cpu_s"] for r in runs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=None, help="DB to run on (written to: a spare copy)")
    parser.add_argument("--quick", action="store_true", help="a 50k-post sample DB")
    parser.add_argument("--posts", type=int, default=None, help="size of the default sample DB (200k)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also run REF's kohaku_data (git archive) on the same DB")
    args = parser.parse_args()
    db = args.db or sample_db(args.posts or (50_000 if args.quick else 200_000))
    with sqlite3.connect(db) as conn:
        posts, lo, hi = conn.execute("SELECT count(*), min(id), max(id) FROM post").fetchone()
    names = run_child(["--list"], ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        if args.baseline:
            base = Path(tmp) / "baseline"
            extract_tree(args.baseline, base)
            names += [n for n in run_child(["--list"], base) if n not in names]
        now = measure(names, db, ROOT, args.rounds)
        then = measure(names, db, base, args.rounds) if base else {}
    print(f"{posts:,} posts (ids {lo}..{hi}), {db}")
    for name in names:
        print(f"  {name:28} {_show(now[name])}" + (f"   baseline {_show(then[name])}" if then else ""))
    write_results("keepers", {
        "db": str(db), "posts": posts, "span": (hi - lo + 1) if posts else 0, "rounds": args.rounds,
        "keepers": now, **({"baseline": args.baseline, "baseline_keepers": then} if then else {}),
        "polars_max_threads": os.environ.get("POLARS_MAX_THREADS"), "cores": os.cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(),
    })


def _show(figures: dict) -> str:
    if figures.get("absent"):
        return f"{'(absent)':>30}"
    return f"peak {figures['anon_peak_mib']:>6,} MiB anon, {figures['cpu_s']:>7.2f} CPU-s"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--list":
        child_list()
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
