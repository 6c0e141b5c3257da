"""Re-caption a built dataset without re-encoding any image.

    info = recaption_dataset(Path("datasets/kxl-1"), new_recipe, db)

A new caption config or new DB scores give a NEW dataset folder; the old one is only read.
The new folder is `<parent>/<recipe name>-<recipe version>` when the recipe's name or version
differs from the old dataset's, else `<old folder>-recap-<8 hex>` (a hash of the recipe and the
DB fingerprint, so the same inputs land in the same folder). Shards keep their samples and
order; image members are copied byte for byte from the old tars, `.txt`/`.json` rewritten;
manifest, rejects, index, stats and dataset.lock are written anew. A post gone from the DB is
dropped (reject `post_missing`). Only the caption part (and name/version/description) of the
recipe may differ from the old build's: anything else needs `kdata build`. The `[artifacts]` tag
rules may differ too: the new recipe's are applied to the measures the manifest kept (its reject
rules must stay as they were, since rejected images are not in the shards).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.card import write_card
from kohaku_data.assembly.lock import (
    LOCK_NAME, BuildError, build_lock, db_fingerprint, db_sources, dumps, lock_dict, read_lock, write_atomic,
)
from kohaku_data.images.artifacts import FIELDS as ARTIFACT_FIELDS
from kohaku_data.assembly.manifest import (
    INDEX_NAME, MANIFEST_NAME, MANIFEST_SCHEMA, REJECTS_NAME, Parts, dataset_stats, manifest_row,
    merge_parquet, write_index, write_parquet, write_stats,
)
from kohaku_data.assembly.plan import REJECT_SCHEMA
from kohaku_data.assembly.shards import ShardInfo, ShardWriter, shard_name
from kohaku_data.assembly.tasks import Staged, sample_members
from kohaku_data.config import ArtifactRules, CaptionConfig, Recipe
from kohaku_data.curation.artifacts import TAG_KEYS, tagged_caption
from kohaku_data.db.handle import DanbooruDB

_FREE_KEYS = ("caption", "name", "version", "description")
# What `_rewrite` reads of the old dataset besides its shards.
_SMALL_FILES = (LOCK_NAME, INDEX_NAME, MANIFEST_NAME, REJECTS_NAME, "stats.json")


def recaption_dataset(dataset: storage.Target, recipe: Recipe, db: DanbooruDB, *,
                      out: storage.Target | None = None) -> dict[str, Any]:
    """Write the re-captioned copy of `dataset`; returns its summary (out, samples, shards, …).

    Either side may be a URL (`s3://…`). An old dataset there is read through a local copy of its
    small files, one shard at a time; a new one there is made in a local work folder (one per
    URL, under ~/.cache/kdata/work/) and then published object by object, dataset.lock last."""
    from kohaku_data.curation.captions import curated_thresholds

    with _readable(dataset) as old:
        old_lock = read_lock(old)
        if old_lock is None or not (old / INDEX_NAME).is_file():
            raise BuildError(f"{dataset} is not a finished dataset (no dataset.lock): build it with `kdata build`")
        _check_compatible(old_lock["recipe"], recipe)
        fingerprint = db_fingerprint(db)
        target = out if out is not None else _target(dataset, old_lock["recipe"], recipe, fingerprint)
        if _same_place(target, dataset):
            raise BuildError("the re-captioned dataset must go to another folder than the old one")
        thresholds = curated_thresholds(db, recipe.caption)
        lock = lock_dict(recipe, fingerprint, thresholds.to_dict(), old_lock["inputs_sha256"], db_sources(db))
        work = storage.local_path(target) or storage.local_work_dir(target)
        with build_lock(work):
            if _read_remote_lock(target) == lock:
                return _summary(target, json.loads(storage.read_bytes(storage.join(target, "stats.json"))),
                                up_to_date=True)
            _clean(work)
            stats = _rewrite(old, dataset, work, recipe, db, thresholds, lock)
            if storage.is_remote(target):
                _publish(work, target)
    return _summary(target, stats, up_to_date=False)


@contextlib.contextmanager
def _readable(dataset: storage.Target) -> Iterator[Path]:
    """A local folder with the dataset's small files: the dataset itself, or for a URL a
    temporary copy of them (its shards are fetched one at a time by `_rewrite`)."""
    local = storage.local_path(dataset)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix=".kdata-recaption-") as tmp:
        for name in _SMALL_FILES:
            with contextlib.suppress(FileNotFoundError):
                (Path(tmp) / name).write_bytes(storage.read_bytes(storage.join(dataset, name)))
        yield Path(tmp)


def _read_remote_lock(target: storage.Target) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(storage.join(target, LOCK_NAME)))
    except (FileNotFoundError, ValueError):
        return None


def _same_place(a: storage.Target, b: storage.Target) -> bool:
    la, lb = storage.local_path(a), storage.local_path(b)
    if la is not None and lb is not None:
        return la.resolve() == lb.resolve()
    return str(a).rstrip("/") == str(b).rstrip("/")


def _publish(work: Path, target: storage.Target) -> None:
    """Upload the finished dataset in `work` to `target` (dataset.lock last), then empty `work`."""
    storage.publish(work, target, last=LOCK_NAME)
    _clean(work)


def _check_compatible(old: dict[str, Any], recipe: Recipe) -> None:
    old, new = _with_defaults(old), recipe.model_dump(mode="json")
    changed = sorted(k for k in set(old) | set(new) if k not in _FREE_KEYS and _kept(k, old.get(k)) != _kept(k, new.get(k)))
    if changed:
        raise BuildError(
            f"the recipe changes {', '.join(changed)} — more than captions; rebuild with `kdata build` instead"
        )


def _with_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """An old lock's recipe with the keys added since at their defaults (an older build had none)."""
    try:
        return Recipe.model_validate(old).model_dump(mode="json")
    except ValueError:
        return old  # keys since removed: compared as written


def _kept(key: str, value: Any) -> Any:
    """The part of a recipe section a re-caption must keep: all of it, but `[artifacts]`' tag rules."""
    if key == "artifacts" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in TAG_KEYS}
    return value


def _target(dataset: storage.Target, old: dict[str, Any], recipe: Recipe, fingerprint: str) -> storage.Target:
    parent = storage.parent_of(dataset)
    if (old.get("name"), old.get("version")) != (recipe.name, recipe.version):
        return storage.join(parent, recipe.dataset_name)
    tag = hashlib.sha256(f"{recipe.sha256()}:{fingerprint}".encode()).hexdigest()[:8]
    return storage.join(parent, f"{storage.name_of(dataset)}-recap-{tag}")


def _clean(target: Path) -> None:
    for path in target.iterdir():
        if path.name != ".build.lock":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _rewrite(dataset: Path, source: storage.Target, target: Path, recipe: Recipe, db: DanbooruDB, thresholds,
             lock: dict) -> dict:
    """`dataset`: a local folder with the old dataset's small files; `source`: where its shards are."""
    from kohaku_data.captions import caption_posts

    index = json.loads((dataset / INDEX_NAME).read_text())
    manifest = pl.read_parquet(dataset / MANIFEST_NAME)
    parts = Parts(target / ".staging" / "parts")
    shards: list[ShardInfo] = []
    dropped: list[dict] = []
    for entry in index["shardlist"]:
        rows = manifest.filter(pl.col("shard") == entry["url"])
        captions = caption_posts(db, rows["key"].to_list(), recipe.caption, thresholds, variants=True)
        by_id = {c["id"]: c for c in captions.iter_rows(named=True)}
        writer = ShardWriter(target / shard_name(recipe.name, len(shards)))
        with storage.fetched([storage.join(source, entry["url"])]) as (old_tar,):
            if old_tar is None:
                writer.abort()
                raise BuildError(f"{entry['url']} of {source} is missing: run `kdata verify` on the dataset")
            new_rows = _copy_shard(old_tar, rows, by_id, writer, dropped, (recipe.artifacts, recipe.caption))
        if writer.nsamples == 0:
            writer.abort()
            continue
        info = writer.commit()
        parts.commit(len(shards), info, int(rows["key"].max()), new_rows, [])
        shards.append(info)
    merge_parquet(parts.manifest_files(len(shards)), MANIFEST_SCHEMA, target / MANIFEST_NAME)
    from kohaku_data.curation.build import finish_manifest, previous_dedup

    curated = finish_manifest(target, target / MANIFEST_NAME, db, recipe, previous_dedup(dataset))  # weights
    rejects = pl.concat([pl.read_parquet(dataset / REJECTS_NAME), pl.DataFrame(dropped, schema=REJECT_SCHEMA)])
    rejects = rejects.sort("key", "source", "reason", nulls_last=False)
    write_parquet(rejects, target / REJECTS_NAME)
    write_index(target, shards, recipe.name)
    stats = {**dataset_stats(target, rejects, shards), **curated}
    write_stats(target, stats)
    write_card(target, lock)  # README.md + card/*.png, made from the files above
    write_atomic(target / LOCK_NAME, dumps(lock))
    shutil.rmtree(target / ".staging")
    return stats


def _copy_shard(old_tar: Path, rows: pl.DataFrame, captions: dict[int, dict], writer: ShardWriter,
                dropped: list[dict], tagging: tuple[ArtifactRules, CaptionConfig]) -> list[dict]:
    by_image = {row["image"]: row for row in rows.iter_rows(named=True)}
    new_rows: list[dict] = []
    for image_name, data in _image_members(old_tar, by_image):
        row = by_image[image_name]
        caption = captions.get(row["key"])
        if caption is None:
            dropped.append({"key": row["key"], "source": row["source"], "reason": "post_missing",
                            "detail": "the post is no longer in the DB"})
            continue
        staged = Staged(_header(row), data)
        caption = tagged_caption(caption, staged.header["artifacts"], *tagging)  # the new recipe's tag rules
        placement = writer.add_sample(sample_members(staged, caption))
        new_rows.append(manifest_row(staged, caption, writer.path.name, placement))
    return new_rows


def _image_members(path: Path, by_image: dict[str, dict]) -> Iterator[tuple[str, bytes]]:
    """The image members of an old shard, in shard order (text members are rewritten anyway)."""
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.name in by_image:
                yield member.name, tar.extractfile(member).read()


def _header(row: dict[str, Any]) -> dict[str, Any]:
    """The staged-result header of a manifest row: what the image stage said, kept as it was."""
    bucket = [int(v) for v in row["bucket"].split("x")]
    return {
        "key": row["key"], "status": "ok", "format": row["format"], "width": row["width"],
        "height": row["height"], "bucket": bucket,
        "crop_box": [row["crop_left"], row["crop_top"], row["crop_right"], row["crop_bottom"]],
        "source_size": [row["source_width"], row["source_height"]], "source_format": row["source_format"],
        "source_mode": row["source_mode"], "md5_checked": row["md5_checked"], "sha256": row["sha256"],
        "input": {"name": row["source"]},
        "artifacts": {name: row.get(name) for name in ARTIFACT_FIELDS},  # absent in older manifests: None
    }


def _summary(target: storage.Target, stats: dict[str, Any], *, up_to_date: bool) -> dict[str, Any]:
    return {
        "out": str(target), "samples": stats["samples"], "shards": len(stats["shards"]),
        "bytes": stats["bytes"], "rejects": stats["rejects"], "up_to_date": up_to_date,
    }
