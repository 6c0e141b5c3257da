"""Restaging a finished dataset (issue 23): a rebuild whose recipe changed only in `[image] levels`
reuses the stored members of the images whose settings did not change.

A finished build clears its staging area, so a level added to a finished dataset would otherwise
redo every level. Before the image tasks run, `restage` writes, for every image task of the new
plan and every image config of the new recipe (the main bucket and each level) that the old
dataset already holds, the task object the image task would stage — headers rebuilt from the old
manifest and rejects, image bytes read by offset from the old shards (each checked against the
manifest's sha256) — into the folder addressed by that config (`tasks.level_staging`). The image
tasks then find those objects (`tasks.staged_infos`) and compute only the missing configs (still
from one decode of each original).

Only when the old build can stand in for a fresh one: same DB, inputs, toolchain and kdata
version in its `dataset.lock`, and a recipe equal but for `levels`. An item is known for a
config when it is a sample in the manifest, or a rejection the image stage itself made for that
config (one met while decoding holds for every level; `too_small` and the like only for the
config it was recorded for). The few unknown items of a task object (internal errors: a bug,
retried; post and artifact-rule rejects; a level's result behind the main image's rejection)
run through the stage for that config as the image task would; a task object with more than a
quarter unknown is left to the image task.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.executor import Executor, map_unordered
from kohaku_data.assembly.plan import PlanItem
from kohaku_data.assembly.tasks import (
    Staged, commit_staged, level_staging, pack_staged, staged_infos, task_object,
)
from kohaku_data.config import ImageConfig, Recipe
from kohaku_data.images.artifacts import FIELDS as ARTIFACT_FIELDS

# Rejections made before the resize (decode, normalise) or before the stage (the read, the md5):
# the same header for every level of a ladder (`stage.process_levels`, `tasks._process_levels`).
_SHARED_REASONS = frozenset({
    "unreadable_source", "md5_mismatch", "empty_file", "unidentified", "truncated", "decompression_bomb",
    "animated_skipped", "decode_error", "exif_error", "unsupported_mode",
})
# Rejections of one config's resize / encode / verify: known for the config they were recorded for.
_OWN_REASONS = frozenset({"too_small", "encode_error", "verify_mismatch", "decode_error"})


def levels_only_change(previous: dict[str, Any] | None, recipe: Recipe) -> bool:
    """Whether the finished build of `previous` (its dataset.lock) is of a recipe that differs
    from `recipe` in `[image] levels` alone."""
    if not previous or previous.get("recipe_sha256") == recipe.sha256():
        return False
    old = _without_levels(previous.get("recipe"))
    return old is not None and old == _without_levels(recipe.model_dump(mode="json"))


def can_restage(previous: dict[str, Any] | None, recipe: Recipe, state: dict[str, Any]) -> bool:
    """Whether the old dataset's members may stand in for this build's image stage: levels-only
    change, same DB and inputs, and the same versions of what decides the bytes."""
    from kohaku_data import __version__
    from kohaku_data.assembly.lock import toolchain_versions

    return (levels_only_change(previous, recipe)
            and previous.get("db_fingerprint") == state["db_fingerprint"]
            and previous.get("inputs_sha256") == state["inputs_sha256"]
            and previous.get("kdata_version") == __version__
            and previous.get("toolchain") == toolchain_versions())


def _without_levels(dumped: Any) -> dict | None:
    if not isinstance(dumped, dict) or not isinstance(dumped.get("image"), dict):
        return None
    return {**dumped, "image": {k: v for k, v in dumped["image"].items() if k != "levels"}}


@dataclass(frozen=True)
class RestageJob:
    """One task object to write from the old shards (plain data: runs on any executor worker)."""

    path: str  # the task object
    items: tuple[PlanItem, ...]
    headers: tuple[dict[str, Any] | None, ...]  # one per item; an ok one lacks only "mode"; None: unknown
    members: tuple[tuple[str, int, int] | None, ...]  # (shard, offset, size) of each ok item's image
    image: ImageConfig  # the config of this object (levels-free): the unknown items are run through it
    check_md5: bool


def restage_job(job: RestageJob) -> int:
    """Write one task object from the old shards; the images it restaged (0: it was already
    staged, or an old member no longer matches the manifest — the image stage redoes it)."""
    if staged_infos(job.path, job.items) is not None:
        return 0
    from PIL import Image

    from kohaku_data.assembly.tasks import _process
    from kohaku_data.sources import read_entries

    unknown = [i for i, header in enumerate(job.headers) if header is None]
    made = {unknown[j]: _process(job.items[unknown[j]], job.image, job.check_md5, data)  # the stage, as the task would
            for j, data in read_entries([job.items[i].entry for i in unknown])}
    results = []
    for i, (header, member) in enumerate(zip(job.headers, job.members)):
        if header is None:  # unknown: the stage's own result
            results.append(made[i])
            continue
        if member is None:  # a known rejection
            results.append(Staged(header))
            continue
        shard, offset, size = member
        try:
            data = storage.read_range(shard, offset, size)
        except FileNotFoundError:
            return 0
        if len(data) != size or hashlib.sha256(data).hexdigest() != header["sha256"]:
            return 0
        with Image.open(io.BytesIO(data)) as im:  # the stored mode: read from the header only
            mode = im.mode
        results.append(Staged({**header, "mode": mode}, data))
    commit_staged(job.path, job.items, pack_staged(results))
    return sum(m is not None for m in job.members)


def restage(out: storage.Target, previous: dict[str, Any], recipe: Recipe, tasks, executor: Executor) -> int:
    """Restage into `tasks.staging` (and its levels' folders) what the finished dataset in
    `out` (lock `previous`) holds of the image tasks `tasks` (`pipeline.ImageTasks`, from the
    start); the number of images restaged."""
    from kohaku_data.assembly.manifest import MANIFEST_NAME, REJECTS_NAME

    old = Recipe.model_validate(previous["recipe"])
    check_md5 = recipe.check_md5
    old_levels = {str(level_staging(tasks.staging, cfg, check_md5)): name for name, cfg in old.image.level_configs()}
    # (the new config's staging folder, the old manifest's column suffix), main bucket first
    sources = [(str(tasks.staging), "", recipe.image.model_copy(update={"levels": ()}))]
    for _, cfg in recipe.image.level_configs():
        folder = str(level_staging(tasks.staging, cfg, check_md5))
        if folder in old_levels:
            sources.append((folder, f"@{old_levels[folder]}", cfg))
    manifest = pl.read_parquet(io.BytesIO(storage.read_bytes(storage.join(out, MANIFEST_NAME))))
    rows = {row["key"]: row for row in manifest.iter_rows(named=True)}
    rejects = {(r["key"], r["source"]): r for r in pl.read_parquet(
        io.BytesIO(storage.read_bytes(storage.join(out, REJECTS_NAME)))).iter_rows(named=True) if r["key"] is not None}
    level_names = list(old.image.level_names())

    def jobs():
        for task in tasks:
            for folder, suffix, image in sources:
                job = _job(out, folder, suffix, task.items, rows, rejects, level_names, image, check_md5)
                if job is not None:
                    yield job

    return sum(map_unordered(executor, restage_job, jobs()))


def _job(out: storage.Target, folder: str, suffix: str, items: tuple[PlanItem, ...], rows: dict, rejects: dict,
         level_names: list[str], image: ImageConfig, check_md5: bool) -> RestageJob | None:
    """The job of one (task, config); None when too many of its items are unknown for that config
    (more than a quarter: the image task, which decodes each original once for every missing
    config, does better)."""
    headers: list[dict | None] = []
    members: list[tuple[str, int, int] | None] = []
    for item in items:
        base = {"key": item.key, "input": {"name": item.entry.name, "size": item.entry.size}}
        row = rows.get(item.key)
        if row is not None:
            if row["source"] != item.entry.name:
                return None
            headers.append({**base, **_ok_header(row, suffix)})
            members.append((str(storage.join(out, row["shard"])), row[f"image_offset{suffix}"],
                            row[f"image_size{suffix}"]))
            continue
        reject = rejects.get((item.key, item.entry.name))
        header = _rejected(reject, suffix, level_names) if reject is not None else None
        headers.append(None if header is None else {**base, **header})
        members.append(None)
    if 4 * sum(h is None for h in headers) > len(items):
        return None
    return RestageJob(str(task_object(folder, items)), items, tuple(headers), tuple(members), image, check_md5)


def _ok_header(row: dict[str, Any], at: str) -> dict[str, Any]:
    """The staged header of a manifest row for the config whose columns end in `at` ("" or
    "@<level>"); the source's fields are the main image's (one decode serves every level)."""
    return {
        "status": "ok", "md5_checked": row["md5_checked"], "source_format": row["source_format"],
        "source_mode": row["source_mode"], "source_size": [row["source_width"], row["source_height"]],
        "bucket": [int(v) for v in row[f"bucket{at}"].split("x")],
        "crop_box": [row[f"crop_left{at}"], row[f"crop_top{at}"], row[f"crop_right{at}"], row[f"crop_bottom{at}"]],
        "width": row[f"width{at}"], "height": row[f"height{at}"], "format": row[f"format{at}"],
        "sha256": row[f"sha256{at}"], "artifacts": {name: row.get(name) for name in ARTIFACT_FIELDS},
    }


def _rejected(reject: dict[str, Any], at: str, level_names: list[str]) -> dict[str, Any] | None:
    """The rejected header for the config of `at` that this reject row proves, or None."""
    reason, detail = reject["reason"], reject["detail"] or ""
    out_of_memory = detail.endswith("out of memory")  # met in the decode or in one level's resize
    for name in level_names:  # the main image was ok, level `name` was rejected (`ShardLayout.add`)
        prefix = f"level {name}: "
        if detail.startswith(prefix):
            own = at == f"@{name}" and reason in _SHARED_REASONS | _OWN_REASONS and not out_of_memory
            return {"status": "rejected", "reason": reason, "detail": detail[len(prefix):]} if own else None
    if reason in _SHARED_REASONS and not out_of_memory:
        return {"status": "rejected", "reason": reason, "detail": detail}
    if at == "" and reason in _OWN_REASONS:
        return {"status": "rejected", "reason": reason, "detail": detail}
    return None
