"""Benchmark: `kdata db import FILE` as a user runs it, each file into a fresh DB, side by side.

    .venv/bin/python benchmarks/bench_import_cli.py FILE [FILE ...] [--workdir DIR]
    .venv/bin/python benchmarks/bench_import_cli.py [--posts N | --quick]   (makes the files: `make bench`)

For the sizes bench_snapshot_import cannot hold (12M posts: a 2.2 GB parquet file, 3.2 GB of
JSONL.gz, ~28 GB of DB and up to ~15 GB of WAL while indexes are built), e.g. the same posts
as a danbooru2026-shaped snapshot and as JSONL.gz:

    .venv/bin/python benchmarks/bench_snapshot_import.py --posts 12000000 --write-parquet p.parquet
    mkfifo f; gzip -1 < f > p.jsonl.gz & .venv/bin/python -c "import sys; sys.path.insert(0, '.'); \\
        from pathlib import Path; from benchmarks.bench_import import generate; generate(Path('f'), 12_000_000)"

Each file: `kdata db init` then `kdata db import FILE --db NEW.db` in a child process; its RSS
and anonymous RSS sampled every 0.5 s (the phases: rows, index rebuild, summary refresh), peak
RSS from wait4, wall and CPU seconds, posts/s. The DB is deleted before the next file (disk).
Files run one after the other, so the machine's load hits them alike only if it is steady:
CPU seconds are the steadier figure. Writes benchmarks/results/import_cli.json.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_captions import status_bytes  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

KDATA = str(Path(sys.executable).parent / "kdata")
SAMPLE_EVERY_S = 0.5


def import_one(path: Path, workdir: Path) -> dict:
    """`kdata db import path` into a fresh DB under `workdir`, measured; the DB removed after."""
    db = workdir / f"{path.name}.db"
    subprocess.run([KDATA, "db", "init", "--db", str(db)], check=True, capture_output=True)
    trace: list[tuple[float, float, float]] = []
    cpu0 = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen([KDATA, "db", "import", str(path), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True)
    reader.start()
    while proc.poll() is None:
        rss, anon = (status_bytes(proc.pid, field) / 2**20 for field in ("VmRSS", "RssAnon"))
        if rss:  # 0: it has just ended
            trace.append((round(time.perf_counter() - start, 1), rss, anon))
        time.sleep(SAMPLE_EVERY_S)
    wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu0  # poll() reaped it
    reader.join()
    for leftover in workdir.glob(f"{db.name}*"):
        leftover.unlink()
    text = "".join(output)
    found = re.search(r"posts: ([\d,]+) inserted", text)
    posts = int(found.group(1).replace(",", "")) if found else 0
    return {"file": str(path), "bytes": path.stat().st_size, "exit": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "posts": posts, "posts_per_s": round(posts / wall), "posts_per_cpu_s": round(posts / cpu),
            "peak_rss_mib": round(max((r for _, r, _ in trace), default=0)),
            "peak_anon_mib": round(max((a for _, _, a in trace), default=0)),
            "trace_s_rss_anon": trace[::20], "output_tail": text[-1500:]}


def make_files(folder: Path, n: int) -> list[Path]:
    """The same n posts (bench_import's generator) as a danbooru2026-shaped parquet file and JSONL.gz."""
    from benchmarks.bench_import import generate
    from benchmarks.bench_snapshot_import import to_parquet

    jsonl, parquet, packed = folder / "posts.jsonl", folder / "posts.parquet", folder / "posts.jsonl.gz"
    generate(jsonl, n)
    to_parquet(jsonl, parquet)
    with open(jsonl, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    jsonl.unlink()
    return [parquet, packed]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="files to import (none: make N posts as parquet and JSONL.gz)")
    parser.add_argument("--posts", type=int, default=200_000, help="posts to make when no files are given")
    parser.add_argument("--quick", action="store_true", help="50k posts when no files are given")
    parser.add_argument("--workdir", type=Path, default=None, help="where the DBs go (default: a temporary folder)")
    args = parser.parse_args()
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise SystemExit(f"no such file: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        files = args.files or make_files(Path(tmp), 50_000 if args.quick else args.posts)
        runs = []
        for path in files:
            run = import_one(path, Path(tmp))
            runs.append(run)
            print(f"  {path.name}: {run['posts']:,} posts, {run['wall_s']:,.0f} s wall, {run['cpu_s']:,.0f} CPU-s "
                  f"({run['posts_per_s']:,}/s, {run['posts_per_cpu_s']:,}/CPU-s), peak RSS {run['peak_rss_mib']:,} MiB, "
                  f"anonymous {run['peak_anon_mib']:,} MiB, exit {run['exit']}", flush=True)
    first = runs[0]
    for run in runs[1:]:
        print(f"  {Path(run['file']).name} took x{run['cpu_s'] / first['cpu_s']:.2f} the CPU and "
              f"x{run['wall_s'] / first['wall_s']:.2f} the wall time of {Path(first['file']).name}")
    write_results("import_cli", {"runs": runs, "free_disk_gb": round(shutil.disk_usage(args.workdir or tempfile.gettempdir()).free / 1e9),
                                 "cpu_count": os.cpu_count()})


if __name__ == "__main__":
    main()
