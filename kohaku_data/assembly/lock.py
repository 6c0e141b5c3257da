"""`dataset.lock` (what a dataset version was built from) and the one-build-per-folder lock.

The lock file is deterministic JSON (sorted keys, no timestamps): the same recipe, DB and
inputs give the same bytes. `build_lock` is a non-blocking `filelock` on `OUT/.build.lock`:
a second build into the same folder refuses at once instead of interleaving writes (an output
on object storage has a lease object instead, `lease.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from kohaku_data import __version__, atomic, storage
from kohaku_data.config import Recipe
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.errors import KdataError

LOCK_NAME = "dataset.lock"
BUILD_LOCK_NAME = ".build.lock"


class BuildError(KdataError):
    """A build cannot start or go on (busy folder, other recipe, bad inputs)."""


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold the folder's build lock; refuse at once when another build holds it. (An output on
    object storage is held by a lease object instead: `lease.DriverLease`.)"""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / BUILD_LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BuildError(
            f"another build is running into {out} (it holds {out / BUILD_LOCK_NAME}); "
            "wait for it to finish or pick another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def db_fingerprint(db: DanbooruDB) -> str:
    """Cheap sha256 over counts and maxima that change whenever posts or tags change.

    Max ids stand in for row counts of the 0.25B-row relation table (a count would scan it).
    """
    conn = db.connection()
    updated = "max(updated_at)" if db.has_updated_at else "''"
    post = conn.execute(f"SELECT count(*), max(id), {updated}, sum(score), sum(fav_count) FROM post").fetchone()
    tag = conn.execute("SELECT count(*), max(id) FROM tag").fetchone()
    rel = conn.execute("SELECT max(id) FROM posttagrelation").fetchone()
    text = json.dumps([list(post), list(tag), list(rel)], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def db_sources(db: DanbooruDB) -> list[dict[str, Any]]:
    """The files the DB was imported from (`kdata db import` provenance): name, size, sha256, format."""
    from kohaku_data.db.provenance import sources

    return [{k: s[k] for k in ("name", "size", "sha256", "format")} for s in sources(db)]


def _recipe_dump(recipe: Recipe) -> dict[str, Any]:
    """The full recipe, less `image.levels` when there are none (a build without levels keeps the
    lock, and the card's recipe table, it had before levels existed)."""
    dumped = recipe.model_dump(mode="json")
    if not recipe.image.levels:
        dumped["image"].pop("levels", None)
    return dumped


def lock_dict(recipe: Recipe, db_print: str, thresholds: dict[str, Any], inputs_sha256: str,
              sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "kdata_version": __version__,
        "recipe": _recipe_dump(recipe),
        "recipe_sha256": recipe.sha256(),
        "db_fingerprint": db_print,
        "db_sources": sources or [],
        "caption_thresholds": thresholds,
        "inputs_sha256": inputs_sha256,
        # The bytes of shards and parquet files depend on these: same versions, same bytes.
        "toolchain": toolchain_versions(),
    }


def toolchain_versions() -> dict[str, str]:
    """The versions of the libraries that decide the output bytes (every task reports them; a
    cluster whose nodes disagree is refused)."""
    import importlib.metadata

    import numpy
    import PIL
    import polars
    from PIL import features

    return {
        "pillow": PIL.__version__,
        "libwebp": features.version("webp") or "",
        "libavif": features.version("avif") or "",
        "zlib": features.version("zlib") or "",
        "numpy": numpy.__version__,
        "polars": polars.__version__,
        # The dataset card's PNG bytes; read from the metadata (importing pyplot costs ~0.3 s a task).
        "matplotlib": importlib.metadata.version("matplotlib"),
    }


def dumps(data: Any) -> bytes:
    """The one JSON layout of every file kdata writes: sorted keys, fixed indentation."""
    return (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False, default=str) + "\n").encode()


def write_atomic(path: Path, data: bytes) -> None:
    """Every dataset file kdata writes is a promise to readers: atomic and durable."""
    atomic.write_atomic(path, data, durable=True)


def read_lock(out: Path | str) -> dict[str, Any] | None:
    """The `dataset.lock` of a folder or URL, or None when there is none."""
    path = storage.join(out, LOCK_NAME)
    try:
        return json.loads(storage.read_bytes(path))
    except (FileNotFoundError, IsADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        raise BuildError(f"{storage.display(path)} is unreadable ({exc}); remove it or rebuild with --force") from exc


def check_same_recipe(out: Path, recipe: Recipe, previous: dict[str, Any] | None, force: bool) -> None:
    """Refuse to mix two recipes in one folder (unless --force, which starts over)."""
    if previous is None or force or previous.get("recipe_sha256") == recipe.sha256():
        return
    name = previous.get("recipe", {}).get("name", "?")
    raise BuildError(
        f"{out} holds a build of another recipe ({name}, sha256 {str(previous.get('recipe_sha256'))[:12]}…); "
        f"pick another --out, or pass --force to replace it"
    )
