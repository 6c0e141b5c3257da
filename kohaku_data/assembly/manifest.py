"""Manifest, rejects, index and stats of a built dataset, written with fixed settings.

While packing, each finished shard leaves a *part* in `OUT/.staging/parts/` (a folder, or
objects beside an `s3://` output): its manifest rows,
the rejects in its key range and its `ShardInfo` (written last: the commit marker). The final
files are merged from the parts, so memory stays flat and a resumed build reuses the parts of
the shards it keeps. Parquet: zstd level 3, statistics on, fixed row groups → same bytes on
every run; JSON: sorted keys.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.atomic import replacing
from kohaku_data.assembly.lock import dumps, write_atomic
from kohaku_data.assembly.plan import REJECT_SCHEMA
from kohaku_data.assembly.shards import Placement, ShardInfo, member_index_name
from kohaku_data.assembly.tasks import Staged
from kohaku_data.images.artifacts import FIELDS as ARTIFACT_FIELDS, polars_schema as artifact_columns

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
    # CLIP tokens (captions/tokens.py) of the .txt caption, and of every caption variant in the
    # recipe's order (kohaku first: sample_schema.variants_of; the json's `caption_tokens` by name)
    "tokens": pl.Int64, "variant_tokens": pl.List(pl.Int64),
    # the source's artifact measures (kohaku_data/images/artifacts.FIELDS), null where they do not apply
    **artifact_columns(),
    "artifact_tags": pl.List(pl.String),  # tags the recipe's artifact rules added to the caption
}
MEMBERS_SCHEMA: dict[str, pl.DataType] = {"json": pl.String}  # a part's `.json` members, for the card
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
        **token_columns(caption),
        **{name: (h.get("artifacts") or {}).get(name) for name in ARTIFACT_FIELDS},
        "artifact_tags": caption.get("artifact_tags") or [],
        **{k: v for name, level in staged.levels for k, v in level_columns(name, level, placement).items()},
    }


# `[image] levels`: per extra level, these columns suffixed `@<level>` (after every other column,
# only in a build with levels): the level's member, bucket, crop and where its data lies.
LEVEL_SCHEMA: dict[str, pl.DataType] = {
    "image": pl.String, "format": pl.String, "width": pl.Int32, "height": pl.Int32, "bucket": pl.String,
    "crop_left": pl.Int32, "crop_top": pl.Int32, "crop_right": pl.Int32, "crop_bottom": pl.Int32,
    "image_bytes": pl.Int64, "sha256": pl.String, "image_offset": pl.Int64, "image_size": pl.Int64,
}


def level_columns(name: str, staged: Staged, placement: Placement) -> dict[str, Any]:
    h = staged.header
    member = f"{h['key']}.{name}.{h['format']}"
    offset, size = placement[member]
    left, top, right, bottom = h["crop_box"]
    values = {"image": member, "format": h["format"], "width": h["width"], "height": h["height"],
              "bucket": f"{h['bucket'][0]}x{h['bucket'][1]}", "crop_left": left, "crop_top": top,
              "crop_right": right, "crop_bottom": bottom, "image_bytes": staged.image_bytes,
              "sha256": h["sha256"], "image_offset": offset, "image_size": size}
    return {f"{k}@{name}": v for k, v in values.items()}


def manifest_schema(levels: tuple[str, ...] | list[str] = (),
                    variants: tuple[str, ...] | list[str] = ()) -> dict[str, pl.DataType]:
    """MANIFEST_SCHEMA, plus each level's columns (`bucket@square-256`, …) when there are levels,
    then `tokens_<variant>` per caption variant when the recipe adds variants."""
    return {**MANIFEST_SCHEMA, **{f"{k}@{name}": t for name in levels for k, t in LEVEL_SCHEMA.items()},
            **{f"{VARIANT_TOKENS}{name}": pl.Int32 for name in variants}}


# `tokens_<variant>`: one Int32 column per caption variant (kohaku first, then the recipe's `add`
# order), only in a build whose recipe adds variants: a build without them keeps its bytes (its
# `tokens` is the kohaku count). `variant_tokens` (the same counts as one list) stays for readers
# of earlier builds.
VARIANT_TOKENS = "tokens_"


def manifest_variants(columns: list[str] | dict) -> list[str]:
    """The caption variants whose `tokens_<variant>` columns a manifest's columns carry, in order."""
    return [c[len(VARIANT_TOKENS):] for c in columns if c.startswith(VARIANT_TOKENS)]


def manifest_levels(columns: list[str] | dict) -> list[str]:
    """The extra levels a manifest's columns carry, in their order."""
    return [c.split("@", 1)[1] for c in columns if c.startswith("bucket@")]


def dataset_levels(dataset: storage.Target) -> list[str]:
    """The `[image] levels` of a built dataset (a folder or a URL), in recipe order: its
    manifest's `bucket@<level>` columns (of a URL, from the footer alone); none without a manifest."""
    path = storage.join(dataset, MANIFEST_NAME)
    return manifest_levels(list(storage.parquet_schema(path))) if storage.is_file(path) else []


def _row_levels(rows: list[dict]) -> list[str]:
    return manifest_levels(list(rows[0])) if rows else []


def _row_variants(rows: list[dict]) -> list[str]:
    return manifest_variants(list(rows[0])) if rows else []


def token_columns(caption: dict[str, Any]) -> dict[str, Any]:
    """`tokens` (of the .txt: the variant whose text it is) and `variant_tokens` of a caption row;
    `tokens_<variant>` per variant too when there is more than the kohaku one."""
    names = [k[len("variant_"):] for k in caption if k.startswith("variant_")]
    counts = [caption.get(f"tokens_{n}") for n in names]
    txt = next((c for n, c in zip(names, counts) if caption[f"variant_{n}"] == caption["caption"]), None)
    per = {f"{VARIANT_TOKENS}{n}": c for n, c in zip(names, counts)} if names != ["kohaku"] and names else {}
    return {"tokens": txt, "variant_tokens": counts, **per}


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    with replacing(path) as tmp:
        frame.write_parquet(tmp, **_PARQUET)


# -- parts --------------------------------------------------------------------------------------
class Parts:
    """The per-shard parts of one build in progress, in a folder or under a URL prefix beside
    the output (each part file is committed whole; the `.json` last, as the commit marker)."""

    def __init__(self, folder: storage.Target) -> None:
        self.folder = folder

    def _path(self, index: int, suffix: str) -> storage.Target:
        return storage.join(self.folder, f"{index:06d}{suffix}")

    def commit(self, index: int, info: ShardInfo, last_key: int, rows: list[dict], rejects: list[dict],
               json_docs: list[str] | None = None) -> None:
        """`json_docs`: the shard's `.json` members in order, when the caller makes its card from
        the parts (a build: its shards may lie on object storage, never read back)."""
        manifest = pl.DataFrame(rows, schema=manifest_schema(_row_levels(rows), _row_variants(rows)))
        rejected = pl.DataFrame(rejects, schema=REJECT_SCHEMA)
        storage.commit_bytes(self._path(index, ".manifest.parquet"), parquet_bytes(manifest))
        storage.commit_bytes(self._path(index, ".rejects.parquet"), parquet_bytes(rejected))
        if json_docs is not None:
            storage.commit_bytes(self._path(index, ".members.parquet"),
                                 parquet_bytes(pl.DataFrame({"json": json_docs}, schema=MEMBERS_SCHEMA)))
        storage.commit_bytes(self._path(index, ".json"), dumps({"shard": asdict(info), "last_key": last_key}))

    def completed(self, out: storage.Target) -> list[tuple[ShardInfo, int]]:
        """The longest run of shards 0, 1, … whose part is committed and whose tar (of the
        recorded size) and member index are in place. Two listings, then one read per part:
        on object storage a resume does not ask after every file one by one."""
        files = dict(storage.list_files(out))
        parts = set(storage.list_names(self.folder))
        done: list[tuple[ShardInfo, int]] = []
        while f"{len(done):06d}.json" in parts and f"{len(done):06d}.members.parquet" in parts:
            record = self._record(len(done))
            try:
                info = ShardInfo(**record["shard"])
            except (TypeError, KeyError):  # unreadable, or a part from an older kdata (no md5sum): redo
                break
            if files.get(info.url) != info.filesize or member_index_name(info.url) not in files:
                break
            done.append((info, record["last_key"]))
        return done

    def _record(self, index: int) -> dict:
        try:
            record = json.loads(storage.read_bytes(self._path(index, ".json")))
        except (FileNotFoundError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def manifest_files(self, count: int) -> list[storage.Target]:
        return [self._path(i, ".manifest.parquet") for i in range(count)]

    def reject_files(self, count: int) -> list[storage.Target]:
        return [self._path(i, ".rejects.parquet") for i in range(count)]

    def member_files(self, count: int) -> list[storage.Target]:
        return [self._path(i, ".members.parquet") for i in range(count)]


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    """A frame as parquet in kdata's fixed settings (the same bytes as `write_parquet`)."""
    buf = io.BytesIO()
    frame.write_parquet(buf, **_PARQUET)
    return buf.getvalue()


# -- final files -----------------------------------------------------------------------------
def merge_parquet(parts: list[Path], schema: dict[str, pl.DataType], path: Path) -> None:
    """Concatenate parts in order into one file (streamed: memory stays flat)."""
    if parts and schema is MANIFEST_SCHEMA:  # a build with levels / variants: their columns too (any non-empty part)
        columns = [list(pl.read_parquet_schema(p)) for p in parts]
        found = [manifest_levels(c) for c in columns]
        variants = next((v for v in map(manifest_variants, columns) if v), [])
        schema = manifest_schema(next((lv for lv in found if lv), []), variants)
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
