"""A built dataset as the exporters read it: index, manifest (with member offsets), recipe."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data.assembly.lock import LOCK_NAME
from kohaku_data.assembly.manifest import INDEX_NAME, MANIFEST_NAME, OFFSET_COLUMNS
from kohaku_data.config import Recipe
from kohaku_data.errors import KdataError


class ExportError(KdataError):
    """The dataset cannot be exported as asked (not built, built by an older kdata, bad options)."""


@dataclass(frozen=True)
class Built:
    path: Path
    index: dict[str, Any]
    manifest: pl.DataFrame
    recipe: Recipe
    lock_sha256: str  # identifies the build: an export records which one it holds
    level: str | None = None  # `--level`: one of the recipe's `[image] levels` (see `at_level`)


@dataclass
class ExportResult:
    out: Path
    format: str
    samples: int
    written: int = 0  # files copied or written now
    linked: int = 0  # files hard-linked from --link-from
    skipped: int = 0  # files already in place (a resumed or repeated export)
    bytes: int = 0  # image bytes in the export
    files: dict[str, str] = field(default_factory=dict)  # role -> path of the metadata files


def open_built(path: Path) -> Built:
    lock_path = path / LOCK_NAME
    if not lock_path.is_file() or not (path / INDEX_NAME).is_file():
        raise ExportError(f"{path} is not a finished dataset (no {LOCK_NAME}): build it with `kdata build` first")
    lock_bytes = lock_path.read_bytes()
    lock = json.loads(lock_bytes)
    manifest = pl.read_parquet(path / MANIFEST_NAME)
    if any(col not in manifest.columns for col in OFFSET_COLUMNS):
        raise ExportError(f"{path} was built by an older kdata (its manifest has no member offsets); rebuild it")
    return Built(path, json.loads((path / INDEX_NAME).read_text()), manifest,
                 Recipe.model_validate(lock["recipe"]), hashlib.sha256(lock_bytes).hexdigest())


LEVEL_COLUMNS = ("format", "width", "height", "bucket", "crop_left", "crop_top", "crop_right", "crop_bottom",
                 "image_bytes", "sha256", "image_offset", "image_size")


def at_level(built: Built, rows: pl.DataFrame, level: str) -> tuple[Built, pl.DataFrame]:
    """The dataset and rows as the exporters see them at one of its `[image] levels`: that
    level's image member, sizes, bucket and offsets in the main columns (the file keeps its
    export name `<key>.<ext>`, beside `<key>.txt`), and the level's bucket preset as the recipe's."""
    names = built.recipe.image.level_names()
    if level not in names or f"bucket@{level}" not in rows.columns:
        raise ExportError(f"--level {level}: {built.path} has no such level (its levels: "
                          f"{', '.join(names) or 'none, only the main image'}); pick one of them")
    rows = rows.with_columns(
        *(pl.col(f"{c}@{level}").alias(c) for c in LEVEL_COLUMNS),
        image=pl.col("key").cast(pl.String) + "." + pl.col(f"format@{level}"),
    )
    preset = dict(built.recipe.image.level_configs())[level].bucket
    recipe = built.recipe.model_copy(update={"image": built.recipe.image.model_copy(update={"bucket": preset})})
    return Built(built.path, built.index, built.manifest, recipe, built.lock_sha256, level), rows


def read_member(tar: Any, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of an open shard (one positioned read, no tar scan)."""
    import os

    data = os.pread(tar.fileno(), size, offset)
    if len(data) != size:
        raise ExportError(f"{tar.name} is shorter than its manifest says; run `kdata verify` on the dataset")
    return data
