"""Writing caption frames: parquet, JSONL, or one `<id>.txt` per post. Every write is atomic."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

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
    # Parts on disk, then one streaming pass into the final file: memory stays at one chunk.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        parts, total = [], 0
        for i, frame in enumerate(frames):
            part = Path(tmp) / f"{i:06d}.parquet"
            frame.write_parquet(part)
            parts.append(part)
            total += frame.height
            on_chunk(frame.height)
        target = Path(tmp) / "all.parquet"
        if parts:
            pl.scan_parquet(parts).sink_parquet(target)
        else:
            from kohaku_data.captions.layout import OUTPUT_COLUMNS

            pl.DataFrame(schema={c: pl.String for c in OUTPUT_COLUMNS}).write_parquet(target)
        os.replace(target, out)
    return total


def _write_jsonl(frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None]) -> int:
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    total = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for frame in frames:
                frame.write_ndjson(fh)
                total += frame.height
                on_chunk(frame.height)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return total


def _write_txt(frames: Iterable[pl.DataFrame], out: Path, on_chunk: Callable[[int], None]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for frame in frames:
        for post_id, caption in frame.select("id", "caption").iter_rows():
            final = out / f"{post_id}.txt"
            tmp = out / f".{post_id}.txt.tmp"
            tmp.write_text(caption, encoding="utf-8")
            os.replace(tmp, final)
        total += frame.height
        on_chunk(frame.height)
    return total


__all__ = ["CaptionOutputError", "output_kind", "write_captions"]
