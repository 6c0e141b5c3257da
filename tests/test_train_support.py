"""Helpers of the kohaku_data.train tests: a small real build, with member offsets.

`built_dataset` runs a real `build_dataset` on the sample DB and images of test_build_support.
If the build does not yet record member offsets in manifest.parquet (older builds), they are
added here from the tars themselves (tarfile's own member offsets), so the reader is always
tested against real shards and real offsets.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import polars as pl

from test_build_support import build, make_inputs, small_recipe

OFFSETS = ("image_offset", "image_size", "txt_offset", "txt_size", "json_offset", "json_size")


def built_dataset(root: Path, n_posts: int = 40) -> Path:
    inputs = make_inputs(root / "inputs", n_posts=n_posts)
    out = root / "ds"
    build(inputs, out, small_recipe(shard_max_bytes=300_000), workers=1)
    ensure_offsets(out)
    return out


def tar_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (offset of its data, size), read by tarfile."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def ensure_offsets(out: Path) -> None:
    manifest = pl.read_parquet(out / "manifest.parquet")
    if all(c in manifest.columns for c in OFFSETS):
        return
    members: dict[tuple[str, str], tuple[int, int]] = {}
    for shard in manifest["shard"].unique().to_list():
        for name, where in tar_offsets(out / shard).items():
            members[(shard, name)] = where
    cols: dict[str, list[int]] = {c: [] for c in OFFSETS}
    for row in manifest.select("shard", "image", "key").iter_rows(named=True):
        for member, name in (("image", row["image"]), ("txt", f"{row['key']}.txt"), ("json", f"{row['key']}.json")):
            offset, size = members[(row["shard"], name)]
            cols[f"{member}_offset"].append(offset)
            cols[f"{member}_size"].append(size)
    manifest.with_columns(pl.Series(c, v, pl.Int64) for c, v in cols.items()).write_parquet(out / "manifest.parquet")
