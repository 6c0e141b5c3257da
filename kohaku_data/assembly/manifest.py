"""Manifest, rejects, index and stats of a built dataset, written with fixed settings.

While packing, each finished shard leaves a *part* in `OUT/.staging/parts/`: its manifest rows,
the rejects in its key range and its `ShardInfo` (written last: the commit marker). The final
files are merged from the parts, so memory stays flat and a resumed build reuses the parts of
the shards it keeps. Parquet: zstd level 3, statistics on, fixed row groups → same bytes on
every run; JSON: sorted keys.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data.atomic import replacing
from kohaku_data.assembly.lock import dumps, write_atomic
from kohaku_data.assembly.plan import REJECT_SCHEMA
from kohaku_data.assembly.shards import Placement, ShardInfo, member_index_path
from kohaku_data.assembly.tasks import Staged

MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.parquet"
INDEX_NAME = "index.json"
STATS_NAME = "stats.json"

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Int64, "shard": pl.String, "image": pl.String, "format": pl.String,
    "width": pl.Int32, "height": pl.Int32, "bucket": pl.String,
    "crop_left": pl.Int32, "crop_top": pl.Int32, "crop_right": pl.Int32, "crop_bottom": pl.Int32,
    "source": pl.String, "source_format": pl.String, "source_mode": pl.String,
    "source_width": pl.Int32, "source_height": pl.Int32, "md5_checked": pl.Boolean,
    "image_bytes": pl.Int64, "sha256": pl.String, "caption": pl.String,
    "rating": pl.String, "quality": pl.String, "year": pl.String,
    "score": pl.Int64, "fav_count": pl.Int64, "created_at": pl.String,
    # Where each member's DATA (not its tar header) lies in the shard: one byte-range read per
    # member fetches a sample without scanning the tar (kohaku_data.train relies on these names).
    "image_offset": pl.Int64, "image_size": pl.Int64, "txt_offset": pl.Int64, "txt_size": pl.Int64,
    "json_offset": pl.Int64, "json_size": pl.Int64,
}
OFFSET_COLUMNS = ("image_offset", "image_size", "txt_offset", "txt_size", "json_offset", "json_size")
_PARQUET = {"compression": "zstd", "compression_level": 3, "statistics": True, "row_group_size": 65_536}


def manifest_row(staged: Staged, caption: dict[str, Any], shard: str, placement: Placement) -> dict[str, Any]:
    """One sample's row; `placement` is what `ShardWriter.add_sample` returned for its members."""
    h = staged.header
    left, top, right, bottom = h["crop_box"]
    key = h["key"]
    (image_offset, image_size), (txt_offset, txt_size), (json_offset, json_size) = (
        placement[f"{key}.{h['format']}"], placement[f"{key}.txt"], placement[f"{key}.json"])
    return {
        "key": h["key"], "shard": shard, "image": f"{h['key']}.{h['format']}", "format": h["format"],
        "width": h["width"], "height": h["height"], "bucket": f"{h['bucket'][0]}x{h['bucket'][1]}",
        "crop_left": left, "crop_top": top, "crop_right": right, "crop_bottom": bottom,
        "source": h["input"]["name"], "source_format": h["source_format"], "source_mode": h["source_mode"],
        "source_width": h["source_size"][0], "source_height": h["source_size"][1],
        "md5_checked": h["md5_checked"], "image_bytes": staged.image_bytes, "sha256": h["sha256"],
        "caption": caption["caption"], "rating": caption.get("rating"), "quality": caption.get("quality"),
        "year": caption.get("year_tag"), "score": caption.get("score"), "fav_count": caption.get("fav_count"),
        "created_at": None if caption.get("created_at") is None else str(caption["created_at"]),
        "image_offset": image_offset, "image_size": image_size, "txt_offset": txt_offset,
        "txt_size": txt_size, "json_offset": json_offset, "json_size": json_size,
    }


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    with replacing(path) as tmp:
        frame.write_parquet(tmp, **_PARQUET)


# -- parts --------------------------------------------------------------------------------------
class Parts:
    """The per-shard parts of one build in progress."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, index: int, suffix: str) -> Path:
        return self.folder / f"{index:06d}{suffix}"

    def commit(self, index: int, info: ShardInfo, last_key: int, rows: list[dict], rejects: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet(pl.DataFrame(rows, schema=MANIFEST_SCHEMA), self._path(index, ".manifest.parquet"))
        write_parquet(pl.DataFrame(rejects, schema=REJECT_SCHEMA), self._path(index, ".rejects.parquet"))
        write_atomic(self._path(index, ".json"), dumps({"shard": asdict(info), "last_key": last_key}))

    def completed(self, out: Path) -> list[tuple[ShardInfo, int]]:
        """The longest run of shards 0, 1, … whose part is committed and whose tar is in place."""
        done: list[tuple[ShardInfo, int]] = []
        while (path := self._path(len(done), ".json")).is_file():
            record = json.loads(path.read_text())
            try:
                info = ShardInfo(**record["shard"])
            except TypeError:  # a part from an older kdata (no md5sum): redo that shard
                break
            tar = out / info.url
            if not tar.is_file() or tar.stat().st_size != info.filesize or not member_index_path(tar).is_file():
                break
            done.append((info, record["last_key"]))
        return done

    def manifest_files(self, count: int) -> list[Path]:
        return [self._path(i, ".manifest.parquet") for i in range(count)]

    def reject_files(self, count: int) -> list[Path]:
        return [self._path(i, ".rejects.parquet") for i in range(count)]


# -- final files -----------------------------------------------------------------------------
def merge_parquet(parts: list[Path], schema: dict[str, pl.DataType], path: Path) -> None:
    """Concatenate parts in order into one file (streamed: memory stays flat)."""
    with replacing(path) as tmp:
        if parts:
            pl.scan_parquet(parts, schema=schema).sink_parquet(tmp, **_PARQUET)
        else:
            pl.DataFrame(schema=schema).write_parquet(tmp, **_PARQUET)


def write_index(out: Path, shards: list[ShardInfo], name: str) -> dict[str, Any]:
    index = {
        "__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
        "shardlist": [asdict(s) for s in shards],
    }
    write_atomic(out / INDEX_NAME, dumps(index))
    return index


def dataset_stats(out: Path, rejects: pl.DataFrame, shards: list[ShardInfo]) -> dict[str, Any]:
    """Counts, bytes and bucket histograms per shard and overall, from the written manifest."""
    manifest = pl.scan_parquet(out / MANIFEST_NAME)
    per = (manifest.group_by("shard", "bucket").agg(pl.len().alias("n"), pl.col("image_bytes").sum())
           .sort("shard", "bucket").collect())
    buckets: dict[str, int] = {}
    shard_buckets: dict[str, dict[str, int]] = {}
    for shard, bucket, n, _ in per.iter_rows():
        buckets[bucket] = buckets.get(bucket, 0) + n
        shard_buckets.setdefault(shard, {})[bucket] = n
    reasons = rejects.group_by("reason").len().sort("reason")
    return {
        "samples": sum(s.nsamples for s in shards),
        "bytes": sum(s.filesize for s in shards),
        "image_bytes": int(per["image_bytes"].sum()) if per.height else 0,
        "rejects": dict(reasons.iter_rows()),
        "buckets": dict(sorted(buckets.items())),
        "shards": [
            {"url": s.url, "nsamples": s.nsamples, "filesize": s.filesize, "buckets": shard_buckets.get(s.url, {})}
            for s in shards
        ],
    }


def write_stats(out: Path, stats: dict[str, Any]) -> None:
    write_atomic(out / STATS_NAME, dumps(stats))
