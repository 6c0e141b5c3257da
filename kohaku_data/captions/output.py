"""Writing caption frames: parquet, JSONL, or one `<id>.txt` per post. Every write is atomic."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

from kohaku_data.atomic import replacing, write_atomic
from kohaku_data.config import CAPTION_CHUNK_SIZE
from kohaku_data.errors import KdataError


class CaptionOutputError(KdataError):
    """The output path cannot be written."""


def output_kind(out: Path) -> str:
    """parquet / jsonl by suffix; a folder (existing, or a path without suffix) gets .txt files."""
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if out.is_dir() or suffix == "":
        return "txt"
    raise CaptionOutputError(f"cannot tell the format of {out}: use NAME.parquet, NAME.jsonl or a folder for .txt files")


def write_captions(
    frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None] = lambda n: None
) -> int:
    """Write every frame to `out`; returns the number of posts written."""
    kind = output_kind(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = {"parquet": _write_parquet, "jsonl": _write_jsonl, "txt": _write_txt}[kind]
    return writer(frames, out, on_chunk)


def _write_parquet(frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None]) -> int:
    # Row groups of one caption chunk: each is encoded while the next chunk is captioned (with
    # polars' default of 100k rows, the last 100k rows were encoded after the last caption).
    return _stream(frames, out, on_chunk, lambda lazy, path: lazy.sink_parquet(
        path, compression_level=1, row_group_size=CAPTION_CHUNK_SIZE))


def _write_jsonl(frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None]) -> int:
    return _stream(frames, out, on_chunk, lambda lazy, path: lazy.sink_ndjson(path))


def _stream(
    frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None],
    sink: Callable[[pl.LazyFrame, str], None],
) -> int:
    """One streaming pass into one file, written atomically: polars pulls the frames (from a
    thread of its own) and encodes each as it comes, so encoding overlaps captioning, memory
    stays at a few chunks and nothing is encoded twice."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        from kohaku_data.captions.layout import OUTPUT_COLUMNS

        first = pl.DataFrame(schema={c: pl.String for c in OUTPUT_COLUMNS})
    written = 0

    def batches(columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _size: int | None):
        nonlocal written
        for frame in itertools.chain([first], frames):
            written += frame.height
            on_chunk(frame.height)
            frame = frame if columns is None else frame.select(columns)
            yield frame if predicate is None else frame.filter(predicate)

    with replacing(out) as tmp:
        # register_io_source is polars' (unstable) streaming source: pinned in constraints.txt,
        # and tests/test_captions_cli.py reads both formats back.
        sink(register_io_source(batches, schema=first.schema), str(tmp))
    return written


def _write_txt(frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for frame in frames:
        for post_id, caption in frame.select("id", "caption").iter_rows():
            write_atomic(out / f"{post_id}.txt", caption.encode("utf-8"))
        total += frame.height
        on_chunk(frame.height)
    return total


__all__ = ["CaptionOutputError", "output_kind", "write_captions"]
