"""The hf export's parquet writer (kohaku_data/export/parquet.py): image bytes copied from a shard
into polars' file, read back by polars, pyarrow and 🤗 datasets as the very frame polars writes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.export.hf import parquet_schema
from kohaku_data.export.parquet import Member, decode_struct, encode_struct, write_with_members

SIZES = [70_000, 5, 0, 300_000, 65_535, 65_536, 1 << 20, 123_457]  # both sides of the padding threshold


def _shard(path: Path, sizes: list[int], seed: int = 0) -> list[tuple[int, bytes]]:
    """A file of random blobs at 512-byte boundaries (as in a tar), with junk between them."""
    rng = np.random.default_rng(seed)
    blobs, offset, out = [], 512, bytearray(512)
    for size in sizes:
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        blobs.append((offset, data))
        out += data + bytes(-size % 512) + rng.integers(0, 256, 512 * int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
        offset = len(out)
    path.write_bytes(bytes(out))
    return blobs


def _frame(images: list[bytes], placeholder: bool) -> pl.DataFrame:
    n = len(images)
    image = pl.DataFrame({"bytes": pl.Series([b"" if placeholder else b for b in images], dtype=pl.Binary),
                          "path": [f"{i}.webp" for i in range(n)]})
    return pl.DataFrame({"key": list(range(n)), "image": image.to_struct("image"),
                         "caption": [f"tag {i}, |||other" for i in range(n)],
                         "tags": [[f"t{j}" for j in range(i % 3)] for i in range(n)]})


@pytest.mark.parametrize("row_group_size", [3, 100])
def test_parquet_holds_the_members_and_reads_back_as_polars_would_write_it(tmp_path, row_group_size):
    import pyarrow.parquet as pq

    blobs = _shard(tmp_path / "shard", SIZES)
    images = [data for _, data in blobs]
    fd = os.open(tmp_path / "shard", os.O_RDONLY)
    out = os.open(tmp_path / "out.parquet", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        write_with_members(_frame(images, placeholder=True), "image.bytes",
                           [Member(fd, offset, len(data)) for offset, data in blobs], out,
                           row_group_size=row_group_size)
    finally:
        os.close(fd), os.close(out)
    reference = _frame(images, placeholder=False)
    assert pl.read_parquet(tmp_path / "out.parquet").equals(reference)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.equals(reference.to_arrow().cast(table.schema))
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert meta.num_row_groups == -(-len(SIZES) // row_group_size) and meta.num_rows == len(SIZES)
    # Every large image starts at its offset in the shard modulo a page (the kernel's fast copy).
    data = (tmp_path / "out.parquet").read_bytes()
    for offset, blob in blobs:
        if len(blob) >= 1 << 16:
            at = data.index(blob)
            assert at % 4096 == offset % 4096 and data[at - 4:at] == struct.pack("<I", len(blob))


def test_hf_export_matches_the_frame_polars_writes(tmp_path):
    """The real export, read back, equals the frame built the plain way (all bytes in memory)."""
    import json

    from test_export_support import sparse_build

    ds = sparse_build(tmp_path)[1]
    from kohaku_data.export import export_dataset

    export_dataset(ds, tmp_path / "hf", "hf")
    manifest = pl.read_parquet(ds / "manifest.parquet")
    schema = parquet_schema()
    frames = []
    for part in manifest.partition_by("shard", maintain_order=True):
        with open(ds / part["shard"][0], "rb") as f:
            read = lambda o, n: os.pread(f.fileno(), n, o)  # noqa: E731
            images = [read(o, n) for o, n in zip(part["image_offset"], part["image_size"])]
            metas = [json.loads(read(o, n)) for o, n in zip(part["json_offset"], part["json_size"])]
        image = pl.DataFrame({"bytes": pl.Series(images, dtype=pl.Binary), "path": part["image"]})
        variants = {name: [m["captions"][name.removeprefix("caption_")] for m in metas]
                    for name in schema if name.startswith("caption_")}  # one column per stored variant
        frames.append(pl.DataFrame({"key": part["key"], "image": image.to_struct("image"), "caption": part["caption"],
                                    **variants, "json": pl.Series(metas, dtype=schema["json"])}, schema=schema))
    files = sorted((tmp_path / "hf" / "data").glob("*.parquet"))
    assert len(files) == len(frames)
    for path, frame in zip(files, frames):
        assert pl.read_parquet(path).equals(frame), path.name


def test_thrift_codec_round_trips_a_real_footer(tmp_path):
    """Decoding then encoding polars' own footer gives back its bytes: no field is lost or altered."""
    frame = _frame([b"x" * 10, b"y"], placeholder=False)
    frame.write_parquet(tmp_path / "f.parquet", statistics=True, row_group_size=1)
    data = (tmp_path / "f.parquet").read_bytes()
    (length,) = struct.unpack("<I", data[-8:-4])
    footer = data[-8 - length:-8]
    assert encode_struct(decode_struct(footer)) == footer


def test_a_repeated_column_cannot_take_the_bytes(tmp_path):
    frame = pl.DataFrame({"tags": [["a"], ["b"]]})
    out = os.open(tmp_path / "o.parquet", os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        with pytest.raises(ValueError, match="repeated"):
            write_with_members(frame, "tags.list.element", [], out, row_group_size=10)
        with pytest.raises(ValueError, match="no column"):
            write_with_members(frame, "nope", [], out, row_group_size=10)
    finally:
        os.close(out)
