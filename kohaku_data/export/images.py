"""The `images/` folder of the kohya exports: every selected image member, and optionally its caption."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from kohaku_data.export.files import copy_member, in_place, link_same, write_text
from kohaku_data.export.source import Built, ExportResult
from kohaku_data.export.state import same_build
from kohaku_data.progress import progress_bar

IMAGES_DIR = "images"


def place_images(built: Built, rows: pl.DataFrame, out: Path, result: ExportResult, *,
                 link_from: Path | None, captions: bool, progress: bool) -> Path:
    """`out/images/<key>.<ext>` for every row (plus `<key>.txt` when `captions`); returns the folder."""
    folder = out / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    trusted = link_from is not None and same_build(link_from, built)
    columns = ["key", "image", "image_offset", "image_size", "sha256", "caption"]
    with progress_bar("export", rows.height, progress) as bar:
        for part in rows.partition_by("shard", maintain_order=True):
            with open(built.path / part["shard"][0], "rb") as tar:
                for key, name, offset, size, sha256, caption in part.select(columns).iter_rows():
                    _place(tar, folder / name, offset, size, sha256, link_from, trusted, result)
                    if captions:
                        if write_text(folder / f"{key}.txt", caption):
                            result.written += 1
                        else:
                            result.skipped += 1
                    bar.advance()
    result.bytes += int(rows["image_size"].sum()) if rows.height else 0
    return folder


def _place(tar, dst: Path, offset: int, size: int, sha256: str, link_from: Path | None, trusted: bool,
           result: ExportResult) -> None:
    if in_place(dst, size):
        result.skipped += 1
    elif link_from is not None and link_same(link_from / IMAGES_DIR / dst.name, dst, size, sha256,
                                             trusted=trusted):
        result.linked += 1
    else:
        copy_member(tar, offset, size, dst)
        result.written += 1
