"""Another commit's code, to measure beside this tree's in the same run (`--baseline REF`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract_tree(ref: str, dest: Path) -> Path:
    """`kohaku_data` at `ref` into `dest` (run with PYTHONPATH=dest), its migrations inside it as
    the wheel lays them out (`kohaku_data.migrations`): otherwise the editable install maps that
    package to this checkout's migrations/, which may import modules `ref` does not have."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"git -C {ROOT} archive {ref} kohaku_data | tar -x -C {dest}", shell=True, check=True)
    subprocess.run(f"git -C {ROOT} archive {ref} migrations | tar -x -C {dest / 'kohaku_data'}", shell=True, check=True)
    return dest
