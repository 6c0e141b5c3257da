"""The `images/` folder of the kohya exports: every selected image member, and optionally its caption.

The work is planned on the whole selection at once (one directory scan, a polars join against
it) and only the files missing or wrong are touched, in chunks of one shard's rows on a few
threads: a fresh export costs about one `open` + `copy_file_range` + `close` per image (and
`open` + `write` + `close` per caption), a finished one a directory scan.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import polars as pl

from kohaku_data.export.files import link_same, present_sizes, write_member, write_new_text
from kohaku_data.export.pool import in_threads
from kohaku_data.export.source import Built, ExportResult
from kohaku_data.export.state import same_build
from kohaku_data.progress import progress_bar

IMAGES_DIR = "images"
# Files are created on a few threads (see pool.py), in chunks of one shard's rows; the progress
# bar advances per chunk.
THREADS = 4
CHUNK_ROWS = 64


def place_images(built: Built, rows: pl.DataFrame, out: Path, result: ExportResult, *,
                 link_from: Path | None, captions: bool, progress: bool) -> Path:
    """`out/images/<key>.<ext>` for every row (plus `<key>.txt` when `captions`); returns the folder."""
    folder = out / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    plan = _plan(rows, folder, captions)
    result.skipped += rows.height * (1 + captions) - int(plan["image_todo"].sum()) - int(plan["text_todo"].sum())
    trusted = link_from is not None and same_build(link_from, built)
    place = partial(_place_chunk, built.path, folder, link_from, trusted)
    with progress_bar("export", rows.height, progress) as bar:
        bar.advance(rows.height - plan.height)
        for counts in in_threads(place, _chunks(plan), THREADS):
            result.written, result.linked = result.written + counts[0], result.linked + counts[1]
            bar.advance(counts[2])
    result.bytes += int(rows["image_size"].sum()) if rows.height else 0
    return folder


def _chunks(plan: pl.DataFrame) -> Iterator[pl.DataFrame]:
    for part in plan.partition_by("shard", maintain_order=True):
        for start in range(0, part.height, CHUNK_ROWS):
            yield part.slice(start, CHUNK_ROWS)


def _plan(rows: pl.DataFrame, folder: Path, captions: bool) -> pl.DataFrame:
    """The rows with something to write: an image not at its member's size, a caption not
    holding its text (read back only when its size matches: on a resume, not a fresh export)."""
    present = present_sizes(folder)
    have = pl.DataFrame({"name": list(present), "have": list(present.values())},
                        schema={"name": pl.String, "have": pl.Int64})
    plan = (rows.select("shard", "key", "image", "image_offset", "image_size", "sha256", "caption")
            .with_columns(text=pl.format("{}.txt", "key"), text_bytes=pl.col("caption").str.len_bytes())
            .join(have.rename({"name": "image", "have": "image_have"}), on="image", how="left")
            .join(have.rename({"name": "text", "have": "text_have"}), on="text", how="left")
            .with_columns(image_todo=pl.col("image_have").fill_null(-1) != pl.col("image_size"),
                          text_todo=pl.lit(captions) & (pl.col("text_have").fill_null(-1) != pl.col("text_bytes"))))
    if captions:  # same size: compare the bytes (rare, so a Python loop is fine)
        same_size = plan.filter(~pl.col("text_todo")).select("key", "text", "caption")
        differ = [key for key, text, caption in same_size.iter_rows()
                  if (folder / text).read_bytes() != caption.encode()]
        plan = plan.with_columns(text_todo=pl.col("text_todo") | pl.col("key").is_in(differ))
    return plan.filter(pl.col("image_todo") | pl.col("text_todo"))


def _place_chunk(dataset: Path, folder: Path, link_from: Path | None, trusted: bool,
                 chunk: pl.DataFrame) -> tuple[int, int, int]:
    """Place one chunk's files (rows of one shard); returns (written, linked, rows)."""
    columns = ("image", "image_offset", "image_size", "sha256", "image_todo", "image_have",
               "text", "caption", "text_todo", "text_have")
    written = linked = 0
    fd = os.open(dataset / chunk["shard"][0], os.O_RDONLY)
    try:
        for name, offset, size, sha256, image_todo, image_have, text, caption, text_todo, text_have in \
                chunk.select(columns).iter_rows():
            if image_todo:
                dst, replace = folder / name, image_have is not None
                if link_from is not None and link_same(link_from / IMAGES_DIR / name, dst, size, sha256,
                                                       trusted=trusted, replace=replace):
                    linked += 1
                else:
                    write_member(fd, offset, size, dst, replace=replace)
                    written += 1
            if text_todo:
                write_new_text(folder / text, caption.encode(), replace=text_have is not None)
                written += 1
    finally:
        os.close(fd)
    return written, linked, chunk.height
