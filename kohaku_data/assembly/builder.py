"""The build orchestration behind `kdata build`: plan → image tasks → packing → final files.

    result = build_dataset(Path("raw"), Path("datasets/demo-1"), recipe, db, workers=4)

Flow: plan (posts ∩ files, sorted) → image tasks of fixed membership, on the executor (local
processes or a Ray cluster), into a content-addressed staging area beside the output
(`OUT/.staging/`, one object per task; `OUT` a folder or an `s3://…` URL alike) → the
driver lays shards out in key order from the results' sizes, captions made in bulk per batch →
shard tasks, on the executor, write the tars from the staging area → manifest / rejects / index
/ stats / dataset.lock merged from per-shard parts (`pipeline.py` is the driver loop).
Shard boundaries depend only on sizes, never on worker timing, so any worker or node count
gives the same bytes; a killed build resumes from its staged results and committed shards.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from kohaku_data import storage
from kohaku_data.assembly.card import write_card
from kohaku_data.assembly.executor import Executor, LocalExecutor
from kohaku_data.assembly.lease import LEASE_NAME, DriverLease
from kohaku_data.assembly.lock import (
    LOCK_NAME, BuildError, build_lock, check_same_recipe, db_fingerprint, db_sources, dumps, lock_dict, read_lock,
)
from kohaku_data.assembly.manifest import (
    MANIFEST_NAME, MANIFEST_SCHEMA, REJECTS_NAME, STATS_NAME, Parts, dataset_stats, merge_parquet,
    write_index, write_parquet, write_stats,
)
from kohaku_data.assembly.packing import ShardLayout
from kohaku_data.assembly.pipeline import ImageTasks, Pipeline
from kohaku_data.assembly.plan import REJECT_SCHEMA, BuildPlan, make_plan
from kohaku_data.assembly.restage import can_restage, levels_only_change, restage
from kohaku_data.assembly.repair import damaged_shards, index_entries, shard_keys, shard_number, sub_plan
from kohaku_data.assembly.shards import ShardInfo, member_index_name
from kohaku_data.assembly.tasks import staging_dir
from kohaku_data.config import Recipe
from kohaku_data.curation.build import DEDUP_CACHE, curated_fingerprint, dedup_plan, finish_manifest
from kohaku_data.db.handle import DanbooruDB

STAGING_NAME = ".staging"
STATE_NAME = "state.json"
# Beside rejects.parquet when images failed with an unexpected exception (a bug): the first traceback.
ERROR_LOG_NAME = "internal_error.log"


@dataclass
class BuildResult:
    out: storage.Target
    samples: int
    shards: int
    bytes: int
    rejects: dict[str, int]
    buckets: dict[str, int]
    processed: int = 0  # images run through the image stage in this run
    reused: int = 0  # staged results or committed shards reused from an interrupted run
    restaged: int = 0  # images taken from the finished dataset's shards (a levels-only rebuild: restage.py)
    up_to_date: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    placements: dict[str, int] = field(default_factory=dict)  # where this run's tasks ran → count
    repaired: list[str] = field(default_factory=list)  # damaged shards rewritten by this run
    error_log: str | None = None  # the internal-error traceback file, when images hit a bug


def build_dataset(
    src: Path, out: storage.Target, recipe: Recipe, db: DanbooruDB, *, workers: int = 1, force: bool = False,
    progress: bool = False, executor: Executor | None = None, repair: bool = False,
) -> BuildResult:
    """Build (or resume, or confirm up to date) the dataset of `recipe` in `out` (a folder, or
    a URL such as `s3://bucket/datasets/x/`; `src` may be either too). A finished build whose
    shards went missing or changed size has exactly those rewritten; `repair` also re-hashes
    every shard to find damage of the same size (`repair.py`)."""
    from kohaku_data.sources import open_source

    local = storage.local_path(out)
    out = local if local is not None else os.fspath(out).rstrip("/")
    with _one_driver(out) as alive:
        source = open_source(src)
        executor = executor or LocalExecutor(workers)
        result = _Build(out, recipe, db, executor, progress, alive).run(source, force, repair)
        result.placements = dict(sorted(getattr(executor, "placements", {}).items()))
        return result


@contextlib.contextmanager
def _one_driver(out: storage.Target) -> Iterator[Callable[[], None]]:
    """One build per output. A folder: its file lock (the OS drops it when the process dies).
    Object storage: the lease object `OUT/.staging/driver.lock` (`lease.py`), which refuses a
    second driver on any machine; yields the check the driver calls as it goes."""
    if storage.local_path(out) is not None:
        with build_lock(out):
            yield lambda: None
        return
    with DriverLease(storage.join(out, STAGING_NAME), what=storage.display(out)) as lease:
        yield lease.check


class _Build:
    """One run of one build. Staging, parts and shards live beside the output — in its folder,
    or as objects under its URL — so every worker on every node writes and reads them where it
    runs, and a rerun from any machine resumes from them. The final small files are made by
    the driver (in a temporary folder for an output on object storage, then uploaded whole)."""

    def __init__(self, out: storage.Target, recipe: Recipe, db: DanbooruDB, executor: Executor, progress: bool,
                 alive: Callable[[], None] = lambda: None) -> None:
        self.out, self.recipe, self.db, self.executor, self.progress = out, recipe, db, executor, progress
        self.alive = alive
        self.staging_root = storage.join(out, STAGING_NAME)
        self.staging = staging_dir(storage.join(self.staging_root, "images"), recipe.image, recipe.check_md5)
        self.parts = Parts(storage.join(self.staging_root, "parts"))
        self.state_path = storage.join(self.staging_root, STATE_NAME)
        self.dedup_stats: dict = {}

    # -- state ---------------------------------------------------------------------------------
    def run(self, source, force: bool, repair: bool = False) -> BuildResult:
        from kohaku_data.curation.captions import curated_thresholds

        previous = read_lock(self.out)
        if not force and levels_only_change(previous, self.recipe):
            raise BuildError(
                f"{storage.display(self.out)} holds a build of this recipe with other [image] levels "
                f"({', '.join(Recipe.model_validate(previous['recipe']).image.level_names()) or 'none'}); pass "
                "--force to rebuild it in place (the images of unchanged settings are taken from its shards, "
                "only new levels are computed), or pick another --out")
        check_same_recipe(self.out, self.recipe, previous, force)
        state = {"recipe_sha256": self.recipe.sha256(),
                 "db_fingerprint": curated_fingerprint(self.db, self.recipe, db_fingerprint(self.db)),
                 "inputs_sha256": source.fingerprint()}
        if not force and self._up_to_date(previous, state):
            entries = index_entries(self.out)
            damaged = damaged_shards(self.out, entries, deep=repair)
            if damaged:
                return self._repair(source, damaged)
            return _result_from_stats(self.out, up_to_date=True, error_log=self._error_log_if_any())
        if repair and previous is not None and not force:
            raise BuildError(
                f"{storage.display(self.out)} was built from another DB or other inputs (or did not finish); "
                "--repair only rewrites shards of an unchanged build: rerun without --repair to rebuild it")
        restage_from = previous if force and can_restage(previous, self.recipe, state) else None
        self._prepare(state, force, keep_outputs=restage_from is not None)
        thresholds = curated_thresholds(self.db, self.recipe.caption)
        plan = make_plan(self.db, source, self.recipe)
        plan, self.dedup_stats = dedup_plan(self.db, plan, self.recipe, self.executor, self._dedup_cache(),
                                            self.progress)  # a no-op unless the recipe's dedup is on
        restaged = 0
        if restage_from is not None:  # the old dataset's members for the image tasks, then it goes
            tasks = ImageTasks(plan, 0, self.recipe.image, self.recipe.check_md5, self.staging)
            restaged = restage(self.out, restage_from, self.recipe, tasks, self.executor)
            _remove_outputs(self.out)
        shards, tail, counts = self._process_and_pack(plan, thresholds)
        lock = lock_dict(self.recipe, state["db_fingerprint"], thresholds.to_dict(), state["inputs_sha256"],
                         db_sources(self.db))
        result = self._finish(plan, shards, tail, lock, counts)
        result.error_log = self._log_internal_error(plan, result.rejects)
        result.restaged = restaged
        return result

    def _up_to_date(self, previous: dict | None, state: dict) -> bool:
        """Same recipe, DB and inputs as the finished build, and no image met a bug there (a
        rerun retries those: the bug may be fixed by now)."""
        if previous is None or storage.exists(self.state_path):  # a build started since the lock
            return False
        same = all(previous.get(k) == v for k, v in state.items())
        stats = _read_json(storage.join(self.out, STATS_NAME))
        return same and stats is not None and not stats.get("rejects", {}).get("internal_error")

    # -- internal errors -------------------------------------------------------------------------
    def _log_internal_error(self, plan: BuildPlan, rejects: dict[str, int]) -> str | None:
        """Images that failed with an unexpected exception: the first one's traceback (the stage
        run again on the driver) into `internal_error.log` beside rejects.parquet; its path."""
        log = storage.join(self.out, ERROR_LOG_NAME)
        if not rejects.get("internal_error"):
            storage.remove(log)  # from an earlier run of this build
            return None
        from kohaku_data.images.stage import internal_error_trace
        from kohaku_data.sources import read_entry

        frame = pl.read_parquet(io.BytesIO(storage.read_bytes(storage.join(self.out, REJECTS_NAME))))
        first = frame.filter(pl.col("reason") == "internal_error").row(0, named=True)
        items = sub_plan(plan, [first["key"]]).slice(0, 1) if first["key"] is not None else ()
        trace = internal_error_trace(read_entry(items[0].entry), self.recipe.image) if items else ""
        text = (f"{rejects['internal_error']} image(s) failed with an internal error (a bug in kdata).\n"
                f"first: post {first['key']}, {first['source']}\ndetail: {first['detail']}\n\n"
                f"{trace or '(the traceback did not reproduce on the driver)'}\n")
        storage.commit_bytes(log, text.encode())
        return storage.display(log)

    def _error_log_if_any(self) -> str | None:
        log = storage.join(self.out, ERROR_LOG_NAME)
        return storage.display(log) if storage.exists(log) else None

    # -- repair ----------------------------------------------------------------------------------
    def _repair(self, source, damaged: list[dict]) -> BuildResult:
        """Rewrite exactly the `damaged` shards (index.json entries) from their own samples, and
        check each comes out as index.json recorded it."""
        from kohaku_data.curation.captions import curated_thresholds

        thresholds = curated_thresholds(self.db, self.recipe.caption)
        plan = make_plan(self.db, source, self.recipe)
        keys = shard_keys(self.out)
        storage.make_dirs(self.staging)
        processed = 0
        for entry in damaged:
            url = entry["url"]
            for name in (url, member_index_name(url)):
                storage.remove(storage.join(self.out, name))
            sub = sub_plan(plan, keys.get(url, []))
            parts = Parts(storage.join(self.staging_root, "repair", url))
            layout = ShardLayout(self.out, self.recipe, shard_number(url))
            pipeline = Pipeline(self.executor, layout, parts, self.staging,
                                lambda ids: self._captions(ids, thresholds), self.progress, alive=self.alive)
            pipeline.run(ImageTasks(sub, 0, self.recipe.image, self.recipe.check_md5, self.staging))
            written = [asdict(info) for info in pipeline.shards.values()]
            if written != [entry]:
                raise BuildError(
                    f"{url} could not be rewritten as index.json records it (its source files or DB rows "
                    "changed since the build); rebuild with --force")
            processed += pipeline.processed
        self._clear_staging()
        result = _result_from_stats(self.out, processed=processed, error_log=self._error_log_if_any())
        result.repaired = [entry["url"] for entry in damaged]
        return result

    def _prepare(self, state: dict, force: bool, keep_outputs: bool = False) -> None:
        """Start over where needed: --force wipes everything; other DB or inputs drop the packed
        shards (captions or contents may differ) but keep staged images (content-addressed).
        `keep_outputs`: the finished dataset stays until it is restaged (`restage.py`)."""
        old = _read_json(self.state_path)
        if old is not None and old.get("recipe_sha256") != state["recipe_sha256"] and not force:
            raise BuildError(
                f"{storage.display(self.out)} holds an unfinished build of another recipe; pick another --out, "
                "or pass --force to replace it"
            )
        if force:
            if not keep_outputs:
                _remove_outputs(self.out)
            self._clear_staging()
        elif old != state:
            storage.remove_tree(self.parts.folder)
        storage.remove(storage.join(self.out, LOCK_NAME))  # present again only once complete
        storage.make_dirs(self.staging)
        storage.commit_bytes(self.state_path, dumps(state))

    def _clear_staging(self) -> None:
        """Everything under `.staging/` but an object-storage build's lease (its holder removes it last)."""
        if storage.local_path(self.staging_root) is not None:
            storage.remove_tree(self.staging_root)
            return
        for name in storage.list_names(self.staging_root):
            if name != LEASE_NAME:
                storage.remove_tree(storage.join(self.staging_root, name))
                storage.remove(storage.join(self.staging_root, name))

    def _dedup_cache(self) -> Path | None:
        """Where dedup keeps image hashes for reruns: the output folder, or for an output on object
        storage this user's cache (a cache only: made only when the recipe dedups)."""
        local = storage.local_path(self.out)
        if local is not None:
            return local / DEDUP_CACHE
        return storage.local_work_dir(self.out) / DEDUP_CACHE if self.recipe.dedup.policy != "off" else None

    # -- the work ------------------------------------------------------------------------------
    def _process_and_pack(self, plan: BuildPlan, thresholds) -> tuple[list[ShardInfo], list[dict], dict]:
        """Image tasks and shard tasks on the executor (see pipeline.py); the driver lays the
        shards out and records their parts."""
        kept = self.parts.completed(self.out)
        _remove_stale_shards(self.out, self.recipe.name, len(kept))  # shard writes are create-only
        last_key = kept[-1][1] if kept else -1
        start = plan.position_after(last_key)
        tasks = ImageTasks(plan, start, self.recipe.image, self.recipe.check_md5, self.staging)
        layout = ShardLayout(self.out, self.recipe, len(kept))
        pipeline = Pipeline(self.executor, layout, self.parts, self.staging,
                            lambda ids: self._captions(ids, thresholds), self.progress, alive=self.alive)
        pipeline.run(tasks)
        shards = [info for info, _ in kept] + [pipeline.shards[i] for i in sorted(pipeline.shards)]
        return shards, pipeline.tail, {"processed": pipeline.processed, "reused": start + pipeline.reused}

    def _captions(self, ids: list[int], thresholds) -> dict[int, dict]:
        from kohaku_data.captions import caption_posts

        frame = caption_posts(self.db, ids, self.recipe.caption, thresholds, variants=True)  # json: every variant's tokens
        return {row["id"]: row for row in frame.iter_rows(named=True)}

    # -- final files ----------------------------------------------------------------------------
    def _finish(self, plan: BuildPlan, shards: list[ShardInfo], tail: list[dict], lock: dict,
                counts: dict) -> BuildResult:
        with _final_folder(self.out) as final:
            if storage.is_remote(self.out):
                _fetch_latent_records(self.out, final)  # the card lists them, as a rebuild on a disk does
            self._final_files(final, plan, shards, tail, lock)
            _remove_stale_shards(self.out, self.recipe.name, len(shards))
            if storage.is_remote(self.out):
                self._upload(final, shards)
            self.alive()  # the lease still ours: no other driver writes here now
            storage.commit_bytes(storage.join(self.out, LOCK_NAME), dumps(lock))  # last: "complete"
        self._clear_staging()
        return _result_from_stats(self.out, processed=counts["processed"], reused=counts["reused"])

    def _final_files(self, final: Path, plan: BuildPlan, shards: list[ShardInfo], tail: list[dict],
                     lock: dict) -> None:
        """manifest, rejects, index, stats and card into the local folder `final`, from the parts."""
        n = len(shards)
        wanted = self.parts.manifest_files(n) + self.parts.reject_files(n) + self.parts.member_files(n)
        with storage.fetched(wanted) as parts:  # local parts are themselves; remote ones downloaded
            merge_parquet(parts[:n], MANIFEST_SCHEMA, final / MANIFEST_NAME)
            rejects = pl.concat(
                [plan.rejects_frame(), pl.DataFrame(tail, schema=REJECT_SCHEMA)]
                + [pl.read_parquet(p) for p in parts[n:2 * n]]
            ).sort("key", "source", "reason", nulls_last=False)
            docs = [doc for p in parts[2 * n:] for doc in pl.read_parquet(p)["json"].to_list()]
        write_parquet(rejects, final / REJECTS_NAME)
        write_index(final, shards, self.recipe.name)
        curated = finish_manifest(final, final / MANIFEST_NAME, self.db, self.recipe, self.dedup_stats)  # weights
        write_stats(final, {**dataset_stats(final, rejects, shards), **curated})
        write_card(final, lock, docs)  # README.md + card/*.png, made from the files above

    def _upload(self, final: Path, shards: list[ShardInfo]) -> None:
        """The final files into the bucket, each whole; objects of an earlier version go, except
        the latent sets (`kdata latents`): kept as on a disk, where `kdata latents` reuses every
        latent whose image is unchanged and the card and reader tell a stale set."""
        names = [rel for rel, _ in storage.list_files(final) if not _is_latent(rel)]
        for name in names:
            storage.put_file(final / name, storage.join(self.out, name))
        keep = {*names, *(s.url for s in shards), *(member_index_name(s.url) for s in shards)}
        for name, _ in storage.list_files(self.out):
            if name not in keep and not _is_latent(name):
                storage.remove(storage.join(self.out, name))


# -- helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _final_folder(out: storage.Target) -> Iterator[Path]:
    """Where the driver writes the final small files: the output folder itself, or for an
    output on object storage a temporary folder (uploaded, then gone)."""
    local = storage.local_path(out)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix=".kdata-final-") as tmp:
        yield Path(tmp)


def _is_latent(name: str) -> bool:
    from kohaku_data.train.latents import LATENT_DIR

    return name.startswith(f"{LATENT_DIR}/")


def _fetch_latent_records(out: storage.Target, final: Path) -> None:
    """The small files of the latent sets in a bucket output, into the local folder where the
    card is made (`card_data.latent_facts` reads them there; never uploaded back)."""
    from kohaku_data.assembly.card_data import latent_record_names

    for name in latent_record_names(out):
        (final / name).parent.mkdir(parents=True, exist_ok=True)
        (final / name).write_bytes(storage.read_bytes(storage.join(out, name)))


def _read_json(target: storage.Target) -> dict | None:
    try:
        return json.loads(storage.read_bytes(target))
    except (OSError, ValueError):
        return None


_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<index>\d{6})\.(tar|json)(\.tmp)?$")  # a shard or its member index


# kdata's own temporary files (`atomic.replacing`, `storage.committing`): a writer killed mid-write leaves one
_TMP_RE = re.compile(r"^\..+\.\d+\.[0-9a-f]{12}\.tmp$")


def _remove_stale_shards(out: storage.Target, name: str, count: int) -> None:
    """Shards numbered `count` and up (a killed run's leftovers, a previous larger build) and
    temporary files left by killed writers (on a disk; object stores show no partial objects)."""
    for entry in storage.list_names(out):
        match = _SHARD_RE.match(entry)
        if match and match["name"] == name and (int(match["index"]) >= count or entry.endswith(".tmp")):
            storage.remove(storage.join(out, entry))
        elif _TMP_RE.match(entry):
            storage.remove(storage.join(out, entry))  # left by a killed or cancelled writer


def _remove_outputs(out: storage.Target) -> None:
    for entry in storage.list_names(out):
        if _SHARD_RE.match(entry) or entry in (MANIFEST_NAME, REJECTS_NAME, STATS_NAME, "index.json", LOCK_NAME):
            storage.remove(storage.join(out, entry))


def _result_from_stats(out: storage.Target, *, up_to_date: bool = False, processed: int = 0,
                       reused: int = 0, error_log: str | None = None) -> BuildResult:
    stats = json.loads(storage.read_bytes(storage.join(out, STATS_NAME)))
    return BuildResult(
        out=out, samples=stats["samples"], shards=len(stats["shards"]), bytes=stats["bytes"],
        rejects=stats["rejects"], buckets=stats["buckets"], processed=processed, reused=reused,
        up_to_date=up_to_date, stats=stats, error_log=error_log,
    )
