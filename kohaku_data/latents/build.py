"""`kdata latents DATASET --vae PATH`: the driver. One latent task per image shard, on the
build's executors; `latents/manifest.parquet`, `index.json` and `latents.lock` (last) from the
tasks' part records.

Levels: `level=NAME` encodes that `[image] levels` level's stored images (manifest columns
`image_offset@NAME`, `sha256@NAME`, …) into `DATASET/latents/NAME/`, a set laid out as the main
one (its own manifest, index, lock and part records); None is the main image.

Resume: a shard whose part record was made with this spec for these very images (sha256 list)
and whose tar is still the recorded one (its size and member index listed; on a disk its
sha256 too) is kept; other shards are made again, reusing the
member of every sample whose image is unchanged (a recipe change to captions only rewrites the
image shards, moves samples between them, and keeps every latent).

Storage: the dataset is a folder or a URL (`s3://bucket/datasets/x`), read and written through
`kohaku_data.storage` only, so a set in a bucket has the bytes a local run writes. Every file is
committed whole (a rename on a disk, one PUT on object storage); `latents.lock` is removed at
the start and written last, and a task drops its shard's part record before it writes the shard.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path  # the VAE's: it stays on this disk
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.executor import Executor, map_unordered
from kohaku_data.assembly.lock import LOCK_NAME, dumps
from kohaku_data.assembly.manifest import INDEX_NAME, MANIFEST_NAME, dataset_levels, parquet_bytes
from kohaku_data.assembly.shards import ShardInfo, file_sha256, member_index_name
from kohaku_data.errors import KdataError
from kohaku_data.latents.files import local_view
from kohaku_data.latents.tasks import (
    PARTS, LatentDone, LatentSpec, LatentTask, SampleRef, latent_versions, run_latent_task)
from kohaku_data.progress import progress_bar
from kohaku_data.train.latents import LATENT_LOCK, latent_dir

LATENT_SCHEMA: dict[str, pl.DataType] = {
    "key": pl.Int64, "shard": pl.String, "member": pl.String, "offset": pl.Int64, "size": pl.Int64,
    "sha256": pl.String, "image_sha256": pl.String, "bucket": pl.String,
}


class LatentError(KdataError):
    """`kdata latents` cannot start or go on (no built dataset, a device it lacks, other versions)."""


@dataclass
class LatentResult:
    folder: str
    samples: int = 0
    shards: int = 0
    encoded: int = 0
    reused: int = 0
    kept_shards: int = 0
    devices: list[str] = field(default_factory=list)


def latent_shard_name(image_shard: str) -> str:
    """`NAME-000003.tar` → `NAME-latents-000003.tar` (same samples as the image shard)."""
    stem, number = image_shard.removesuffix(".tar").rsplit("-", 1)
    return f"{stem}-latents-{number}.tar"


def make_latents(dataset: storage.Target, spec: LatentSpec, executor: Executor, *, level: str | None = None,
                 progress: bool = False) -> LatentResult:
    """Encode every sample of a built dataset (its `level`'s images; None: the main ones) into
    `dataset/latents/` (a level: `dataset/latents/<level>/`; see the module docstring)."""
    index, manifest = _dataset_tables(dataset, level)
    folder = storage.join(dataset, latent_dir(level))
    storage.make_dirs(storage.join(folder, PARTS))
    storage.remove(storage.join(folder, LATENT_LOCK))  # present again only once complete
    records = _read_parts(folder)
    earlier = _earlier_members(folder, spec, records)
    files = dict(storage.list_files(folder))  # one listing: a resume asks after no file one by one
    result = LatentResult(storage.display(folder))
    done: dict[str, LatentDone | dict[str, Any]] = {}
    tasks = []
    for number, entry in enumerate(index["shardlist"]):
        url = latent_shard_name(entry["url"])
        refs = _sample_refs(manifest.filter(pl.col("shard") == entry["url"]), earlier)
        kept = _kept_part(folder, url, spec, refs, records.get(url), files)
        if kept is not None:
            done[url] = kept
            result.kept_shards += 1
        else:
            tasks.append(LatentTask(number, str(storage.join(dataset, entry["url"])), str(folder), url, refs, spec))
    ours = latent_versions()
    with progress_bar("latents" if level is None else f"latents {level}", manifest.height, progress) as bar:
        bar.advance(sum(len(d["rows"]) for d in done.values()))
        for finished in map_unordered(executor, run_latent_task, tasks):
            if finished.versions != ours:
                raise LatentError(f"a worker made latents with {finished.versions}, this driver has {ours}: "
                                  "install the same torch/diffusers/safetensors everywhere.")
            done[finished.url] = finished
            result.encoded, result.reused = result.encoded + finished.encoded, result.reused + finished.reused
            bar.advance(len(finished.rows))
    parts = [done[latent_shard_name(e["url"])] for e in index["shardlist"]]
    _finish(folder, index if level is None else {**index, "name": f"{index['name']}-{level}"}, spec, parts, result)
    return result


def _dataset_tables(dataset: storage.Target, level: str | None = None) -> tuple[dict[str, Any], pl.DataFrame]:
    where = storage.display(dataset)
    with local_view(dataset, [LOCK_NAME, INDEX_NAME]) as view:
        if not (view / LOCK_NAME).is_file():
            raise LatentError(f"{where} is not a finished kdata build (no {LOCK_NAME}): build it first, "
                              "or finish the build by running it again.")
        index = json.loads((view / INDEX_NAME).read_bytes())
    manifest = storage.join(dataset, MANIFEST_NAME)  # its columns by range: a manifest is mostly captions
    if level is not None and level not in (levels := dataset_levels(dataset)):
        raise LatentError(f"--level {level} is not a level of {where} (its levels: "
                          f"{', '.join(levels) or 'none, only the main image'}): pick one of them, all, or leave it out.")
    at = "" if level is None else f"@{level}"
    columns = ["bucket", "image_offset", "image_size", "sha256"]
    frame = storage.read_parquet(manifest, ["key", "shard", *(c + at for c in columns)])
    return index, frame.rename({c + at: c for c in columns if at}).sort("key")


def _sample_refs(rows: pl.DataFrame, earlier: dict[str, tuple[str, int, int, str]]) -> tuple[SampleRef, ...]:
    return tuple(SampleRef(r["key"], r["bucket"], r["image_offset"], r["image_size"], r["sha256"], earlier.get(r["sha256"]))
                 for r in rows.iter_rows(named=True))


def _read_parts(folder: storage.Target) -> dict[str, dict[str, Any]]:
    """latent shard name → its part record, for every readable record in `folder/.parts/`."""
    found = {}
    for name in storage.list_names(storage.join(folder, PARTS)):
        if name.endswith(".json") and (record := _read_part(storage.join(folder, PARTS, name))) is not None:
            found[name.removesuffix(".json") + ".tar"] = record
    return found


def _earlier_members(folder: storage.Target, spec: LatentSpec,
                     records: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int, int, str]]:
    """image sha256 → (latent shard path, offset, size, sha256) of every member an earlier run
    made with this spec (read again by sha256 before use: a shard may be rewritten meanwhile)."""
    found: dict[str, tuple[str, int, int, str]] = {}
    for _, record in sorted(records.items()):
        if record.get("spec_sha256") != spec.sha256():
            continue
        for row in record["rows"]:
            found.setdefault(row["image_sha256"],
                             (str(storage.join(folder, row["shard"])), row["offset"], row["size"], row["sha256"]))
    return found


def _read_part(target: storage.Target) -> dict[str, Any] | None:
    try:
        record = json.loads(storage.read_bytes(target))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _kept_part(folder: storage.Target, url: str, spec: LatentSpec, refs: tuple[SampleRef, ...],
               record: dict[str, Any] | None, files: dict[str, int]) -> dict[str, Any] | None:
    """The part record of a shard that needs no work: this spec, these images, its tar intact
    (`files`: the set folder's listing, name → size)."""
    if record is None or record.get("spec_sha256") != spec.sha256():
        return None
    if [(r["key"], r["image_sha256"]) for r in record["rows"]] != [(r.key, r.image_sha256) for r in refs]:
        return None
    if files.get(url) != record["info"]["filesize"] or member_index_name(url) not in files:
        return None
    # A file on a disk can change in place: hash it. An object is only ever replaced whole, and
    # a task drops the part before it replaces the shard: its size suffices (no download of a
    # whole set on every resume).
    tar = storage.local_path(storage.join(folder, url))
    if tar is not None and file_sha256(tar) != record["info"]["sha256"]:
        return None
    return record


def _finish(folder: storage.Target, index: dict[str, Any], spec: LatentSpec, parts: list[Any],
            result: LatentResult) -> None:
    """Manifest, index and lock (last) of the set; shards and parts of no current shard go."""
    records = [asdict(p) if isinstance(p, LatentDone) else p for p in parts]
    rows = [row for record in records for row in record["rows"]]
    storage.commit_bytes(storage.join(folder, MANIFEST_NAME),
                         parquet_bytes(pl.DataFrame(rows, schema=LATENT_SCHEMA, orient="row")))
    shards = [ShardInfo(**record["info"]) for record in records]
    storage.commit_bytes(storage.join(folder, INDEX_NAME), dumps({
        "__kind__": "wids-shard-index-v1", "wids_version": 1, "name": f"{index['name']}-latents",
        "shardlist": [asdict(s) for s in shards]}))
    _remove_strays(folder, {s.url for s in shards})
    result.samples, result.shards = len(rows), len(shards)
    result.devices = sorted({record["device"] for record in records})
    storage.commit_bytes(storage.join(folder, LATENT_LOCK), dumps(latent_lock(spec, records, result.devices)))


def latent_lock(spec: LatentSpec, records: list[dict[str, Any]], devices: list[str]) -> dict[str, Any]:
    from kohaku_data.latents.vae import vae_config

    config = vae_config(Path(spec.vae_path), Path(spec.vae_config) if spec.vae_config else None)
    versions = records[0]["versions"] if records else latent_versions()
    return {
        "vae": {"path": spec.vae_path, "sha256": spec.vae_sha256, "latent_channels": config.get("latent_channels", 4),
                "scaling_factor": config.get("scaling_factor"), "shift_factor": config.get("shift_factor")},
        "what": ["mean", "std"] if spec.std else ["mean"], "scaled": False, "dtype": spec.dtype,
        "compute_dtype": "fp32", "device_kind": spec.device, "devices": devices,
        "batch_size": spec.batch_size, "cpu_threads": spec.threads if spec.device == "cpu" else None,
        "spec_sha256": spec.sha256(), "versions": versions, "samples": sum(len(r["rows"]) for r in records),
    }


def _remove_strays(folder: storage.Target, keep: set[str]) -> None:
    """Shards, member indexes and parts of no current shard, and a killed writer's temporary
    files (a disk's `.NAME.tmp`; object storage has none: its writes spool locally)."""
    names = keep | {member_index_name(u) for u in keep} | {INDEX_NAME}
    for name in storage.list_names(folder):  # level folders have no dot in their names
        if (name.endswith((".tar", ".json")) and name not in names) or name.endswith(".tmp"):
            storage.remove(storage.join(folder, name))
    for name in storage.list_names(storage.join(folder, PARTS)):
        if name.endswith(".tmp") or (name.endswith(".json") and name.removesuffix(".json") + ".tar" not in keep):
            storage.remove(storage.join(folder, PARTS, name))


def resolve_device(kind: str, executor: Executor) -> str:
    """"auto" → "cuda" when the executor's workers have GPUs (this machine, or the Ray cluster),
    else "cpu"; the choice is recorded, and a task that lacks it fails instead of falling back."""
    if kind != "auto":
        return kind
    from kohaku_data.assembly.ray_executor import RayExecutor

    if isinstance(executor, RayExecutor):
        import ray

        if not ray.is_initialized():
            ray.init(address=executor.address, log_to_driver=False)
        return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
