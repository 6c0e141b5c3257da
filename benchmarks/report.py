"""Where every benchmark writes its figures: benchmarks/results/<name>.json (atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, data: dict) -> Path:
    """Write `data` as benchmarks/results/<name>.json, print where, and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
