"""The build orchestration behind `kdata build`: plan → image tasks → packing → final files.

    result = build_dataset(Path("raw"), Path("datasets/demo-1"), recipe, db, workers=4)

Flow: plan (posts ∩ files, sorted) → image tasks in parallel into a content-addressed staging
area (`OUT/.staging/`) → shards packed in key order from the staging area, captions made in
bulk per batch → manifest / rejects / index / stats / dataset.lock merged from per-shard parts.
Shard boundaries depend only on sizes, never on worker timing, so any worker count gives the
same bytes; a killed build resumes from its staged results and committed shards.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data.assembly.executor import Executor, LocalExecutor
from kohaku_data.assembly.lock import (
    LOCK_NAME, BuildError, build_lock, check_same_recipe, db_fingerprint, dumps, lock_dict, read_lock,
    write_atomic,
)
from kohaku_data.assembly.manifest import (
    MANIFEST_NAME, MANIFEST_SCHEMA, REJECTS_NAME, STATS_NAME, Parts, dataset_stats, merge_parquet,
    manifest_row, write_index, write_parquet, write_stats,
)
from kohaku_data.assembly.plan import REJECT_SCHEMA, BuildPlan, PlanItem, make_plan
from kohaku_data.assembly.shards import ShardInfo, ShardWriter, member_bytes, shard_name, tar_size
from kohaku_data.assembly.tasks import (
    ImageTask, load_staged, remove_staged, run_image_task, sample_members, staging_dir,
)
from kohaku_data.config import Recipe
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.progress import progress_bar

STAGING_NAME = ".staging"
STATE_NAME = "state.json"
_PACK_BATCH = 1024  # posts captioned per bulk call while packing



@dataclass
class BuildResult:
    out: Path
    samples: int
    shards: int
    bytes: int
    rejects: dict[str, int]
    buckets: dict[str, int]
    processed: int = 0  # images run through the image stage in this run
    reused: int = 0  # staged results or committed shards reused from an interrupted run
    up_to_date: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


def build_dataset(
    src: Path, out: Path, recipe: Recipe, db: DanbooruDB, *, workers: int = 1, force: bool = False,
    progress: bool = False, executor: Executor | None = None,
) -> BuildResult:
    """Build (or resume, or confirm up to date) the dataset of `recipe` in `out`."""
    from kohaku_data.sources import open_source

    out = Path(out)
    with build_lock(out):
        source = open_source(src)
        build = _Build(out, recipe, db, executor or LocalExecutor(workers), progress)
        return build.run(source, force)


class _Build:
    def __init__(self, out: Path, recipe: Recipe, db: DanbooruDB, executor: Executor, progress: bool) -> None:
        self.out, self.recipe, self.db, self.executor, self.progress = out, recipe, db, executor, progress
        self.staging_root = out / STAGING_NAME
        self.staging = staging_dir(self.staging_root / "images", recipe.image, recipe.check_md5)
        self.parts = Parts(self.staging_root / "parts")

    # -- state ---------------------------------------------------------------------------------
    def run(self, source, force: bool) -> BuildResult:
        from kohaku_data.captions import compute_thresholds

        previous = read_lock(self.out)
        check_same_recipe(self.out, self.recipe, previous, force)
        state = {"recipe_sha256": self.recipe.sha256(), "db_fingerprint": db_fingerprint(self.db),
                 "inputs_sha256": source.fingerprint()}
        if not force and self._up_to_date(previous, state):
            return _result_from_stats(self.out, up_to_date=True)
        self._prepare(state, force)
        thresholds = compute_thresholds(self.db, self.recipe.caption)
        plan = make_plan(self.db, source, self.recipe)
        shards, tail, counts = self._process_and_pack(plan, thresholds)
        lock = lock_dict(self.recipe, state["db_fingerprint"], thresholds.to_dict(), state["inputs_sha256"])
        return self._finish(plan, shards, tail, lock, counts)

    def _up_to_date(self, previous: dict | None, state: dict) -> bool:
        if previous is None or self.staging_root.exists():
            return False
        return all(previous.get(k) == v for k, v in state.items()) and (self.out / STATS_NAME).is_file()

    def _prepare(self, state: dict, force: bool) -> None:
        """Start over where needed: --force wipes everything; other DB or inputs drop the packed
        shards (captions or contents may differ) but keep staged images (content-addressed)."""
        state_path = self.staging_root / STATE_NAME
        old = _read_json(state_path)
        if old is not None and old.get("recipe_sha256") != state["recipe_sha256"] and not force:
            raise BuildError(
                f"{self.out} holds an unfinished build of another recipe; pick another --out, "
                "or pass --force to replace it"
            )
        if force:
            _remove_outputs(self.out, wipe_staging=True)
        elif old != state:
            shutil.rmtree(self.parts.folder, ignore_errors=True)
        (self.out / LOCK_NAME).unlink(missing_ok=True)  # present again only once complete
        self.staging.mkdir(parents=True, exist_ok=True)
        write_atomic(state_path, dumps(state))

    # -- the work ------------------------------------------------------------------------------
    def _process_and_pack(self, plan: BuildPlan, thresholds) -> tuple[list[ShardInfo], list[dict], dict]:
        kept = self.parts.completed(self.out)
        last_key = kept[-1][1] if kept else -1
        todo = [item for item in plan.items if item.key > last_key]
        packer = _Packer(self, thresholds, len(kept))
        tasks = list(_chunks(todo, _task_size(len(todo), getattr(self.executor, "workers", 1))))
        ready: dict[int, tuple[PlanItem, ...]] = {}
        next_index, batch = 0, []
        counts = {"processed": 0, "reused": len(plan.items) - len(todo)}
        with progress_bar("build", len(todo), self.progress) as bar:
            for result in self.executor.map_unordered(run_image_task, self._image_tasks(tasks)):
                counts["processed"] += result.done
                counts["reused"] += result.reused
                ready[result.index] = tasks[result.index]
                bar.advance(result.done + result.reused)
                while next_index in ready:  # pack the finished prefix, in plan order
                    batch.extend(ready.pop(next_index))
                    next_index += 1
                if len(batch) >= _PACK_BATCH:
                    packer.pack(batch)
                    batch = []
        packer.pack(batch)
        tail = packer.finish()
        return [info for info, _ in kept] + packer.shards, tail, counts

    def _image_tasks(self, tasks: list[tuple[PlanItem, ...]]) -> Iterator[ImageTask]:
        for index, items in enumerate(tasks):
            yield ImageTask(index, items, self.recipe.image, self.recipe.check_md5, str(self.staging))

    # -- final files ----------------------------------------------------------------------------
    def _finish(self, plan: BuildPlan, shards: list[ShardInfo], tail: list[dict], lock: dict,
                counts: dict) -> BuildResult:
        out = self.out
        merge_parquet(self.parts.manifest_files(len(shards)), MANIFEST_SCHEMA, out / MANIFEST_NAME)
        rejects = pl.concat(
            [plan.rejects_frame(), pl.DataFrame(tail, schema=REJECT_SCHEMA)]
            + [pl.read_parquet(p) for p in self.parts.reject_files(len(shards))]
        ).sort("key", "source", "reason", nulls_last=False)
        write_parquet(rejects, out / REJECTS_NAME)
        write_index(out, shards, self.recipe.name)
        write_stats(out, dataset_stats(out, rejects, shards))
        _remove_stale_shards(out, self.recipe.name, len(shards))
        write_atomic(out / LOCK_NAME, dumps(lock))  # last: its presence means "complete"
        shutil.rmtree(self.staging_root)
        return _result_from_stats(out, processed=counts["processed"], reused=counts["reused"])


class _Packer:
    """Packs staged results into shards in plan order, one bulk caption call per batch."""

    def __init__(self, build: _Build, thresholds, first_index: int) -> None:
        self.build, self.thresholds = build, thresholds
        self.recipe = build.recipe
        self.index = first_index
        self.writer: ShardWriter | None = None
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self.keys: list[int] = []  # staged keys covered by the open shard (removed on commit)
        self.last_key = -1
        self.shards: list[ShardInfo] = []

    def pack(self, items: list[PlanItem]) -> None:
        if not items:
            return
        captions = self._captions([item.key for item in items])
        for item in items:
            staged = load_staged(self.build.staging, item)
            if staged is None:
                raise BuildError(f"the staged result of post {item.key} vanished; rerun the build to redo it")
            caption = captions.get(item.key)
            if not staged.ok:
                self._reject(item, staged.header["reason"], staged.header.get("detail", ""))
            elif caption is None:
                self._reject(item, "post_missing", "the post left the DB during the build")
            else:
                self._add(item, staged, caption)
            self.keys.append(item.key)
            self.last_key = item.key

    def _captions(self, ids: list[int]) -> dict[int, dict]:
        from kohaku_data.captions import caption_posts

        frame = caption_posts(self.build.db, ids, self.recipe.caption, self.thresholds)
        return {row["id"]: row for row in frame.iter_rows(named=True)}

    def _reject(self, item: PlanItem, reason: str, detail: str) -> None:
        self.rejects.append({"key": item.key, "source": item.entry.name, "reason": reason, "detail": detail})

    def _add(self, item: PlanItem, staged, caption: dict) -> None:
        members = sample_members(staged, caption)
        size = sum(member_bytes(len(data)) for _, data in members)
        if self.writer is not None and self._full(size):
            self._commit()
        if self.writer is None:
            self.writer = ShardWriter(self.build.out / shard_name(self.recipe.name, self.index))
        placement = self.writer.add_sample(members)
        self.rows.append(manifest_row(staged, caption, self.writer.path.name, placement))

    def _full(self, size: int) -> bool:
        cap = self.recipe.shard_max_samples
        if cap is not None and self.writer.nsamples >= cap:
            return True
        return tar_size(self.writer.content_bytes + size) > self.recipe.shard_max_bytes

    def _commit(self) -> None:
        info = self.writer.commit()
        self.build.parts.commit(self.index, info, self.last_key, self.rows, self.rejects)
        for key in self.keys:  # the shard is final: its staged results are no longer needed
            remove_staged(self.build.staging, key)
        self.shards.append(info)
        self.index += 1
        self.writer, self.rows, self.rejects, self.keys = None, [], [], []

    def finish(self) -> list[dict]:
        """Commit the open shard; the rejects after the last sample are returned (the tail)."""
        if self.writer is not None:
            self._commit()
        return self.rejects


# -- helpers ----------------------------------------------------------------------------------
def _task_size(n: int, workers: int) -> int:
    """Small tasks keep workers busy on small builds; 64 bounds per-task overhead on big ones.
    (Task size never changes the output: packing follows the plan, not the tasks.)"""
    return max(1, min(64, -(-n // max(1, workers * 8))))


def _chunks(items: list[PlanItem], size: int) -> Iterator[tuple[PlanItem, ...]]:
    for start in range(0, len(items), size):
        yield tuple(items[start:start + size])


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<index>\d{6})\.(tar|json)(\.tmp)?$")  # a shard or its member index


def _remove_stale_shards(out: Path, name: str, count: int) -> None:
    """Shards numbered past the end (a previous, larger build) and leftover temp files."""
    for path in out.iterdir():
        match = _SHARD_RE.match(path.name)
        if match and match["name"] == name and (int(match["index"]) >= count or path.name.endswith(".tmp")):
            path.unlink()


def _remove_outputs(out: Path, *, wipe_staging: bool) -> None:
    for path in out.iterdir():
        if _SHARD_RE.match(path.name) or path.name in (MANIFEST_NAME, REJECTS_NAME, STATS_NAME, "index.json", LOCK_NAME):
            path.unlink()
    if wipe_staging:
        shutil.rmtree(out / STAGING_NAME, ignore_errors=True)


def _result_from_stats(out: Path, *, up_to_date: bool = False, processed: int = 0, reused: int = 0) -> BuildResult:
    import json

    stats = json.loads((out / STATS_NAME).read_text())
    return BuildResult(
        out=out, samples=stats["samples"], shards=len(stats["shards"]), bytes=stats["bytes"],
        rejects=stats["rejects"], buckets=stats["buckets"], processed=processed, reused=reused,
        up_to_date=up_to_date, stats=stats,
    )
