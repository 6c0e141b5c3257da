"""`OUT/kdata-export.json`: which export a folder holds, so a rerun resumes it and another is refused.

Written at the start (`complete: false`) and again at the end (`complete: true`); a rerun with
the same dataset build, format and selection picks up where the last one stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import __version__
from kohaku_data.assembly.lock import dumps
from kohaku_data.atomic import write_atomic  # not fsynced: a lost state file only makes a rerun re-check
from kohaku_data.export.source import Built, ExportError, ExportResult

STATE_NAME = "kdata-export.json"
# What an export writes into OUT (and --force removes); nothing else there is touched.
OWNED = ("images", "data", "card", "dataset.toml", "metadata.jsonl", "metadata.json", "README.md", STATE_NAME)


def begin_export(out: Path, built: Built, fmt: str, selection: dict[str, Any], rows: pl.DataFrame,
                 force: bool) -> dict[str, Any]:
    state = {
        "dataset": str(built.path.absolute()), "dataset_lock_sha256": built.lock_sha256, "format": fmt,
        "selection": selection, "samples": rows.height, "kdata_version": __version__,
    }
    previous = _read(out / STATE_NAME)
    if previous is not None and _identity(previous) != _identity(state):
        if not force:
            raise ExportError(
                f"{out} holds another export ({previous.get('format')} of {previous.get('dataset')}); "
                "pick another folder, or pass --force to replace it"
            )
        remove_export(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / STATE_NAME, dumps({**state, "complete": False}))
    return state


def finish_export(out: Path, state: dict[str, Any], result: ExportResult) -> None:
    write_atomic(out / STATE_NAME, dumps({**state, "complete": True, "files": result.files}))


def same_build(folder: Path, built: Built) -> bool:
    """Whether `folder` holds a finished export of this very build (its files are its members)."""
    try:
        state = _read(folder / STATE_NAME)
    except ExportError:
        return False
    return bool(state) and state.get("complete") is True and state.get("dataset_lock_sha256") == built.lock_sha256


def remove_export(out: Path) -> None:
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _identity(state: dict[str, Any]) -> tuple:
    return state.get("dataset_lock_sha256"), state.get("format"), json.dumps(state.get("selection"), sort_keys=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} is unreadable ({exc}); remove it or pass --force") from exc
