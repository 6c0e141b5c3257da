"""Which shards of a finished build no longer match its index.json, and the plan to rewrite them.

A rerun of a finished build checks its shards cheaply (each tar and member index present, the
tar at its recorded size: one listing); `kdata build --repair` also re-hashes every tar
(sha256, as `kdata verify` does) and compares each member index with the tar. The damaged
shards are rewritten from their own samples only: the manifest says which posts a shard holds,
those rows of the plan are staged again and laid out from the shard's own number, and since
shard bytes depend only on their samples, the rewritten shard is the original byte for byte
(checked against index.json before the build reports success).
"""

from __future__ import annotations

import io
import json

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.manifest import INDEX_NAME, MANIFEST_NAME
from kohaku_data.assembly.plan import BuildPlan
from kohaku_data.assembly.shards import member_index_bytes, member_index_name, tar_member_index


def index_entries(out: storage.Target) -> list[dict]:
    """The shardlist of the build's index.json ([] when it has none)."""
    try:
        return json.loads(storage.read_bytes(storage.join(out, INDEX_NAME)))["shardlist"]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def damaged_shards(out: storage.Target, entries: list[dict], *, deep: bool) -> list[dict]:
    """The index entries whose tar is missing, of another size, or without its member index;
    with `deep` also those whose sha256 or member index disagrees with the tar (reads them all)."""
    files = dict(storage.list_files(out))
    damaged = []
    for entry in entries:
        url = entry["url"]
        cheap_ok = files.get(url) == entry["filesize"] and member_index_name(url) in files
        if not cheap_ok or (deep and not _hashes_match(out, entry)):
            damaged.append(entry)
    return damaged


def _hashes_match(out: storage.Target, entry: dict) -> bool:
    tar = storage.join(out, entry["url"])
    member_json = storage.join(out, member_index_name(entry["url"]))
    with storage.fetched([tar, member_json]) as (local_tar, local_json):
        if local_tar is None or local_json is None:
            return False
        try:
            actual = tar_member_index(local_tar)
        except (OSError, ValueError, EOFError):
            return False
        md5 = actual.pop("md5sum")
        return (actual["hash_lfs"] == entry["sha256"] and md5 == entry["md5sum"]
                and local_json.read_bytes() == member_index_bytes(actual))


def shard_keys(out: storage.Target) -> dict[str, list[int]]:
    """Shard file → the post ids of its samples, from the manifest."""
    data = storage.read_bytes(storage.join(out, MANIFEST_NAME))
    frame = pl.read_parquet(io.BytesIO(data), columns=["key", "shard"])
    return {shard: keys for shard, keys in frame.group_by("shard").agg(pl.col("key").sort()).iter_rows()}


def shard_number(url: str) -> int:
    """`NAME-000012.tar` → 12."""
    return int(url.removesuffix(".tar").rsplit("-", 1)[1])


def sub_plan(plan: BuildPlan, keys: list[int]) -> BuildPlan:
    """The rows of `plan` for exactly these posts (one shard's samples), no rejects."""
    wanted = pl.DataFrame({"key": keys}, schema={"key": pl.Int64})
    return BuildPlan(plan.source, plan.frame.join(wanted, on="key", how="semi", maintain_order="left"), [])
