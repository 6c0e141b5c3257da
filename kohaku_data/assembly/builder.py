"""The build orchestration behind `kdata build`: plan → image tasks → packing → final files.

    result = build_dataset(Path("raw"), Path("datasets/demo-1"), recipe, db, workers=4)

Flow: plan (posts ∩ files, sorted) → image tasks of fixed membership, on the executor (local
processes or a Ray cluster), into a content-addressed staging area (`OUT/.staging/`) → the
driver lays shards out in key order from the results' sizes, captions made in bulk per batch →
shard tasks, on the executor, write the tars from the staging area → manifest / rejects / index
/ stats / dataset.lock merged from per-shard parts (`pipeline.py` is the driver loop).
Shard boundaries depend only on sizes, never on worker timing, so any worker or node count
gives the same bytes; a killed build resumes from its staged results and committed shards.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.card import write_card
from kohaku_data.assembly.executor import Executor, LocalExecutor
from kohaku_data.assembly.lock import (
    LOCK_NAME, BuildError, build_lock, check_same_recipe, db_fingerprint, dumps, lock_dict, read_lock,
    write_atomic,
)
from kohaku_data.assembly.manifest import (
    MANIFEST_NAME, MANIFEST_SCHEMA, REJECTS_NAME, STATS_NAME, Parts, dataset_stats, merge_parquet,
    write_index, write_parquet, write_stats,
)
from kohaku_data.assembly.packing import ShardLayout
from kohaku_data.assembly.pipeline import ImageTasks, Pipeline
from kohaku_data.assembly.plan import REJECT_SCHEMA, BuildPlan, make_plan
from kohaku_data.assembly.shards import ShardInfo
from kohaku_data.assembly.tasks import staging_dir
from kohaku_data.config import Recipe
from kohaku_data.curation.build import DEDUP_CACHE, curated_fingerprint, dedup_plan, finish_manifest
from kohaku_data.db.handle import DanbooruDB

STAGING_NAME = ".staging"
STATE_NAME = "state.json"


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
    placements: dict[str, int] = field(default_factory=dict)  # where this run's tasks ran → count


def build_dataset(
    src: Path, out: Path, recipe: Recipe, db: DanbooruDB, *, workers: int = 1, force: bool = False,
    progress: bool = False, executor: Executor | None = None,
) -> BuildResult:
    """Build (or resume, or confirm up to date) the dataset of `recipe` in `out` (a folder, or
    a URL such as `s3://bucket/datasets/x/`; `src` may be either too)."""
    from kohaku_data.sources import open_source

    if storage.is_remote(out):
        return _build_remote(src, str(out), recipe, db, workers=workers, force=force, progress=progress,
                             executor=executor)
    out = Path(out)
    with build_lock(out):
        source = open_source(src)
        executor = executor or LocalExecutor(workers)
        result = _Build(out, recipe, db, executor, progress).run(source, force)
        result.placements = dict(sorted(getattr(executor, "placements", {}).items()))
        return result


def _build_remote(src, out: str, recipe: Recipe, db: DanbooruDB, **kw) -> BuildResult:
    """`--out` on object storage, for now: build in this URL's local work folder (staging and
    resume live there, so a rerun must run on the same machine), then publish object by object,
    `dataset.lock` last (`storage.publish`), and drop the local copies of the shards. A rerun
    that finds the same lock on both sides is up to date."""
    work = storage.local_work_dir(out)
    result = build_dataset(src, work, recipe, db, **kw)
    local_lock = (work / LOCK_NAME).read_bytes()
    try:
        published = storage.read_bytes(storage.join(out, LOCK_NAME)) == local_lock
    except FileNotFoundError:
        published = False
    if not published:
        if not all((work / s["url"]).is_file() for s in result.stats["shards"]):  # dropped after an earlier publish
            result = build_dataset(src, work, recipe, db, **{**kw, "force": True})
        storage.publish(work, out, last=LOCK_NAME)
    for path in work.iterdir():  # the shards are in the bucket now; the small files stay for reruns
        if _SHARD_RE.match(path.name):
            path.unlink()
    result.out = out
    result.up_to_date = result.up_to_date and published
    return result


class _Build:
    def __init__(self, out: Path, recipe: Recipe, db: DanbooruDB, executor: Executor, progress: bool) -> None:
        self.out, self.recipe, self.db, self.executor, self.progress = out, recipe, db, executor, progress
        self.staging_root = out / STAGING_NAME
        self.staging = staging_dir(self.staging_root / "images", recipe.image, recipe.check_md5)
        self.parts = Parts(self.staging_root / "parts")
        self.dedup_stats: dict = {}

    # -- state ---------------------------------------------------------------------------------
    def run(self, source, force: bool) -> BuildResult:
        from kohaku_data.captions import compute_thresholds

        previous = read_lock(self.out)
        check_same_recipe(self.out, self.recipe, previous, force)
        state = {"recipe_sha256": self.recipe.sha256(),
                 "db_fingerprint": curated_fingerprint(self.db, self.recipe, db_fingerprint(self.db)),
                 "inputs_sha256": source.fingerprint()}
        if not force and self._up_to_date(previous, state):
            return _result_from_stats(self.out, up_to_date=True)
        self._prepare(state, force)
        thresholds = compute_thresholds(self.db, self.recipe.caption)
        plan = make_plan(self.db, source, self.recipe)
        plan, self.dedup_stats = dedup_plan(self.db, plan, self.recipe, self.executor, self.out / DEDUP_CACHE,
                                            self.progress)  # a no-op unless the recipe's dedup is on
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
        """Image tasks and shard tasks on the executor (see pipeline.py); the driver lays the
        shards out and records their parts."""
        kept = self.parts.completed(self.out)
        last_key = kept[-1][1] if kept else -1
        start = plan.position_after(last_key)
        tasks = ImageTasks(plan, start, self.recipe.image, self.recipe.check_md5, self.staging)
        layout = ShardLayout(self.out, self.recipe, len(kept))
        pipeline = Pipeline(self.executor, layout, self.parts, self.staging,
                            lambda ids: self._captions(ids, thresholds), self.progress)
        pipeline.run(tasks)
        shards = [info for info, _ in kept] + [pipeline.shards[i] for i in sorted(pipeline.shards)]
        return shards, pipeline.tail, {"processed": pipeline.processed, "reused": start + pipeline.reused}

    def _captions(self, ids: list[int], thresholds) -> dict[int, dict]:
        from kohaku_data.captions import caption_posts

        frame = caption_posts(self.db, ids, self.recipe.caption, thresholds)
        return {row["id"]: row for row in frame.iter_rows(named=True)}

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
        curated = finish_manifest(out, out / MANIFEST_NAME, self.db, self.recipe, self.dedup_stats)  # weights
        write_stats(out, {**dataset_stats(out, rejects, shards), **curated})
        _remove_stale_shards(out, self.recipe.name, len(shards))
        write_card(out, lock)  # README.md + card/*.png, made from the files above
        write_atomic(out / LOCK_NAME, dumps(lock))  # last: its presence means "complete"
        shutil.rmtree(self.staging_root)
        return _result_from_stats(out, processed=counts["processed"], reused=counts["reused"])


# -- helpers ----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<index>\d{6})\.(tar|json)(\.tmp)?$")  # a shard or its member index


_SHARD_TMP_RE = re.compile(r"^\.(?P<name>.+)-\d{6}\.tar\.\d+\.[0-9a-f]+\.tmp$")  # ShardWriter's temp files


def _remove_stale_shards(out: Path, name: str, count: int) -> None:
    """Shards numbered past the end (a previous, larger build) and leftover temp files."""
    for path in out.iterdir():
        match = _SHARD_RE.match(path.name)
        if match and match["name"] == name and (int(match["index"]) >= count or path.name.endswith(".tmp")):
            path.unlink()
        elif (tmp := _SHARD_TMP_RE.match(path.name)) and tmp["name"] == name:
            path.unlink()  # left by a killed or cancelled shard task


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
