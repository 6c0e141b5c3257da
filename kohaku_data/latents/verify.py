"""`kdata verify` of a dataset's latent set (`DATASET/latents/`), when it has one.

Checks: every latent shard of `latents/index.json` exists with its size and sha256, its member
index and the latent manifest's offsets agree with the tar, every member has its recorded
sha256 and parses as a latent, and every sample of the dataset has a latent of its current image
(image sha256) — a set made before a rebuild that changed pixels is reported stale. The set of
each `[image] levels` level (`DATASET/latents/<level>/`) is checked the same way against that
level's images.

The dataset is a folder or a URL: the small files are read from `latents.files.latent_view`, and
on object storage each latent shard is streamed once into a temporary file (with its member
index), checked, and removed, as `assembly.verify` does with the image shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.manifest import INDEX_NAME, MANIFEST_NAME, dataset_levels
from kohaku_data.assembly.shards import file_sha256, member_index_name, read_member_index
from kohaku_data.latents.files import latent_view
from kohaku_data.latents.tasks import PARTS
from kohaku_data.train.latents import LATENT_DIR, LATENT_LOCK, latent_dir, parse_member


def has_latents(dataset: storage.Target) -> bool:
    return bool(storage.list_names(storage.join(dataset, LATENT_DIR)))


def latent_sets(dataset: storage.Target, levels: list[str]) -> list[str | None]:
    """The levels (None: the main images) that have a latent set, finished or begun."""
    return [level for level in [None, *levels]
            if {LATENT_LOCK, PARTS} & set(storage.list_names(storage.join(dataset, latent_dir(level))))]


def verify_latents(dataset: storage.Target) -> list[str]:
    """Problems of every latent set (main and per level), one sentence each (empty: all good)."""
    with latent_view(dataset) as view:
        sets = latent_sets(dataset, dataset_levels(view))
        if not sets:
            return [f"{LATENT_DIR}/: no {LATENT_LOCK} (unfinished): run kdata latents again to finish it"]
        return [problem for level in sets for problem in _set_problems(dataset, view, level)]


def _set_problems(dataset: storage.Target, view: Path, level: str | None) -> list[str]:
    where = latent_dir(level)
    folder = view / where
    again = "run kdata latents" + (f" --level {level}" if level is not None else "")
    if not (folder / LATENT_LOCK).is_file():
        return [f"{where}/: no {LATENT_LOCK} (unfinished): {again} again to finish it"]
    index = json.loads((folder / INDEX_NAME).read_bytes())
    rows = pl.read_parquet(folder / MANIFEST_NAME)
    problems = []
    for entry in index["shardlist"]:
        tar = storage.join(dataset, where, entry["url"])
        with storage.fetched([tar, storage.join(dataset, where, member_index_name(entry["url"]))]) as (local, _):
            problems += _shard_problems(local, where, entry, rows.filter(pl.col("shard") == entry["url"]))
    sha = "sha256" if level is None else f"sha256@{level}"
    images = pl.read_parquet(view / MANIFEST_NAME, columns=["key", sha]).rename({sha: "sha256"} if level else {})
    joined = images.join(rows.select("key", "image_sha256"), on="key", how="left")
    stale = joined.filter(pl.col("image_sha256").is_null() | (pl.col("image_sha256") != pl.col("sha256")))
    if stale.height:
        problems.append(f"{where}/: {stale.height} samples have no latent of their current image "
                        f"(first key {stale['key'][0]}): {again} again")
    return problems


def _shard_problems(tar: Path | None, where: str, entry: dict, rows: pl.DataFrame) -> list[str]:
    """`tar`: the shard on this disk (the dataset's own file, or a fetched copy with its member
    index beside it); None when it is missing."""
    name = f"{where}/{entry['url']}"
    if tar is None or not tar.is_file():
        return [f"{name}: missing"]
    if tar.stat().st_size != entry["filesize"] or file_sha256(tar) != entry["sha256"]:
        return [f"{name}: size or sha256 differs from {where}/index.json (the file changed)"]
    files = read_member_index(tar)["files"]
    problems = []
    if len(files) != rows.height:
        problems.append(f"{name}: {len(files)} members, the latent manifest lists {rows.height}")
    with open(tar, "rb") as f:
        for row in rows.iter_rows(named=True):
            at = files.get(row["member"])
            if at is None or (at["offset"], at["size"]) != (row["offset"], row["size"]):
                problems.append(f"{name}: {row['member']} is not where the latent manifest says")
                continue
            f.seek(row["offset"])
            data = f.read(row["size"])
            if hashlib.sha256(data).hexdigest() != row["sha256"]:
                problems.append(f"{name}: {row['member']} sha256 differs from the latent manifest")
            elif "mean" not in parse_member(data):
                problems.append(f"{name}: {row['member']} holds no mean")
    return problems
