"""Run every benchmarks/bench_*.py in turn (`make bench`; `make bench QUICK=1` for the short versions).

Each benchmark prints its figures beside a baseline measured in the same run and writes
benchmarks/results/<name>.json; this runner prints one line per benchmark and exits non-zero
if any of them failed to run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
OPT_IN = {"scale"}  # benchmarks run only when named in ONLY=


def main(argv: list[str]) -> int:
    extra = [a for a in argv if a.startswith("--")]
    only = [a.replace("-", "_") for a in argv if not a.startswith("--")]  # scale-out = bench_scale_out.py
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    else:  # hours and ~25 GB of disk at full size: only when named (make bench ONLY=scale)
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") not in OPT_IN]
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} {' '.join(extra)} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *extra])
        print(f"=== {script.stem}: exit {code} in {time.perf_counter() - start:.1f} s", flush=True)
        if code:
            failed.append(script.stem)
    print(f"\nresults in {HERE / 'results'}/" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
