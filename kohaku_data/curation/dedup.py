"""Duplicates among a build plan's posts: hash on the executor, group, keep one per group.

    result = find_duplicates(db, plan.items, recipe.dedup, executor, cache_dir)
    plan = drop_duplicates(plan, result)

- Hashes (`phash.py`) are computed by `HashTask`s on the same executors as the image stage
  (`map_unordered`: a local process pool or Ray), from the files the plan points at, and cached
  in `cache_dir/hashes-<kind>.parquet` keyed by (post, file name, file size): a rerun, or a
  build after `kdata dedup`, hashes only what changed.
- Links: the same md5 of the bytes; `exact` adds the same decoded pixels; `near` adds phash
  pairs within `threshold` bits (multi-index search, `groups.py`), or within `family_threshold`
  for posts of one parent/child family (Danbooru's `parent_id` links: a family's revisions and
  re-uploads differ more than strangers' copies, e.g. a re-cropped or re-signed revision).
- Groups are the components of the links; each keeps one post by the recipe's rule (highest
  fav_count or score, then most pixels, then lowest id); the others are rejects `duplicate`
  whose detail names the kept post and the closest link.

Deterministic for any worker count: hashes are a function of the bytes, the results are sorted
by post before grouping, and components depend on the links only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.atomic import replacing
from kohaku_data.config import DedupConfig
from kohaku_data.curation.groups import components, family_labels, near_pairs
from kohaku_data.curation.phash import COLOUR_BINS, colour_l1, hash_image, phash_of_thumbs
from kohaku_data.db.handle import DanbooruDB

HASH_VERSION = 2  # bump when a hash definition changes: old caches are then not reused
_FILE_ID = ("key", "container", "member", "size")  # which file a cached hash is of
_HASHES = {"key": pl.Int64, "md5": pl.String, "pixels": pl.String, "phash": pl.UInt64, "colour": pl.Binary,
           "error": pl.String}
HASH_SCHEMA = {"key": pl.Int64, "container": pl.UInt32, "member": pl.String, "size": pl.Int64,
               **{k: v for k, v in _HASHES.items() if k != "key"}}
GROUP_SCHEMA = {"key": pl.Int64, "group": pl.Int64, "kept": pl.Boolean, "link": pl.String, "distance": pl.Int64}
_TASK_SIZE = 64
_ID_CHUNK = 100_000


@dataclass(frozen=True)
class HashTask:
    """Picklable: which plan items to hash and how (runs in any process that sees the files)."""

    index: int
    items: tuple[Any, ...]  # assembly.plan.PlanItem
    exact_pixels: bool
    perceptual: bool
    max_pixels: int


def run_hash_task(task: HashTask) -> list[dict[str, Any]]:
    """Hash rows (key, md5, pixels, phash, error) of the task's items; thumbnails are hashed
    as one batch."""
    from kohaku_data.sources import SourceError, read_entry

    rows, thumbs, at = [], [], []
    for item in task.items:
        row = {"key": item.key, "md5": None, "pixels": None, "phash": None, "colour": None, "error": None}
        try:
            data = read_entry(item.entry)
        except SourceError:
            rows.append({**row, "error": "unreadable_source"})
            continue
        hashes, thumb = hash_image(data, exact_pixels=task.exact_pixels, perceptual=task.perceptual,
                                   max_pixels=task.max_pixels)
        rows.append({**row, "md5": hashes.md5, "pixels": hashes.pixels, "colour": hashes.colour, "error": hashes.error})
        if thumb is not None:
            thumbs.append(thumb)
            at.append(len(rows) - 1)
    if thumbs:
        for position, value in zip(at, phash_of_thumbs(np.stack(thumbs))):
            rows[position]["phash"] = int(value)
    return rows


def _kind(config: DedupConfig) -> str:
    return f"{config.policy}-v{HASH_VERSION}"


def compute_hashes(plan: Any, config: DedupConfig, executor: Any, cache_dir: Path,
                   max_pixels: int, progress: bool = False) -> pl.DataFrame:
    """HASH_SCHEMA rows of the plan's posts (sorted by key), from the cache where the file
    (member name and size) is unchanged. Works on the plan's columns: only the rows a task
    carries become objects."""
    from kohaku_data.assembly.executor import map_unordered
    from kohaku_data.assembly.plan import items_of
    from kohaku_data.progress import progress_bar

    cache_path = Path(cache_dir) / f"hashes-{_kind(config)}.parquet"
    wanted = plan.frame.select(_FILE_ID)
    cached = pl.read_parquet(cache_path) if cache_path.is_file() else pl.DataFrame(schema=HASH_SCHEMA)
    hit = wanted.join(cached, on=list(_FILE_ID), how="inner", nulls_equal=True)  # member is null for files
    todo = plan.frame.join(hit.select("key"), on="key", how="anti", maintain_order="left")
    fresh = [pl.DataFrame(schema=_HASHES)]  # one small frame per task: ~100 bytes a post, not a dict
    tasks = (HashTask(index, items_of(plan.source, todo.slice(start, _TASK_SIZE)), config.policy == "exact",
                      config.policy == "near", max_pixels)
             for index, start in enumerate(range(0, todo.height, _TASK_SIZE)))
    if todo.height:  # everything cached: no workers started
        with progress_bar("hash", todo.height, progress) as bar:
            for rows in map_unordered(executor, run_hash_task, tasks):
                fresh.append(pl.DataFrame(rows, schema=_HASHES))
                bar.advance(len(rows))
    fresh_frame = todo.select(_FILE_ID).join(pl.concat(fresh), on="key").select(list(HASH_SCHEMA))
    result = pl.concat([hit.select(list(HASH_SCHEMA)), fresh_frame]).sort("key")
    if fresh_frame.height:
        merged = pl.concat([cached.join(result.select("key"), on="key", how="anti"), result]).sort("key")
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(cache_path) as tmp:
            merged.write_parquet(tmp, compression="zstd", statistics=True)
    return result


# ---------------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------------
def post_facts(db: DanbooruDB, keys: list[int], metric: str) -> pl.DataFrame:
    """key, metric, area, parent_id of the posts among `keys`."""
    conn = db.connection()
    rows: list[tuple] = []
    for start in range(0, len(keys), _ID_CHUNK):
        wanted = json.dumps(keys[start:start + _ID_CHUNK])
        rows += conn.execute(
            f"SELECT id, {metric}, image_width * image_height, ifnull(parent_id, 0) FROM post "
            "WHERE id IN (SELECT value FROM json_each(?))", (wanted,),
        ).fetchall()
    schema = {"key": pl.Int64, "metric": pl.Int64, "area": pl.Int64, "parent_id": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def group_duplicates(hashes: pl.DataFrame, facts: pl.DataFrame, config: DedupConfig) -> pl.DataFrame:
    """GROUP_SCHEMA rows of every post in a group of two or more (sorted by key)."""
    frame = hashes.sort("key").join(facts, on="key", how="left", maintain_order="left").with_columns(
        pl.col("metric").fill_null(0), pl.col("area").fill_null(0), pl.col("parent_id").fill_null(0))
    n = frame.height
    links = [_equal_links(frame["md5"], "md5")]
    if config.policy == "exact":
        links.append(_equal_links(frame["pixels"], "pixels"))
    if config.policy == "near":
        links.append(_near_links(frame, config))
    i = np.concatenate([x[0] for x in links])
    j = np.concatenate([x[1] for x in links])
    rank = np.concatenate([x[2] for x in links])  # 0 md5, 1 pixels, 2 + distance: phash
    labels = components(n, i, j)
    return _keep(frame, labels, i, j, rank, config)


def _equal_links(values: pl.Series, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row with a value seen before linked to the first row with it."""
    frame = pl.DataFrame({"v": values}).with_row_index("_i").drop_nulls("v")
    first = frame.group_by("v").agg(pl.col("_i").min().alias("_f"))
    joined = frame.join(first, on="v").filter(pl.col("_i") != pl.col("_f"))
    rank = 0 if what == "md5" else 1
    i = joined["_f"].to_numpy().astype(np.int64)
    return i, joined["_i"].to_numpy().astype(np.int64), np.full(len(i), rank, dtype=np.int64)


def _near_links(frame: pl.DataFrame, config: DedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phash pairs within `threshold`; within `colour_threshold` when the colour signatures are
    within `colour_distance` too; within `family_threshold` inside one parent/child family."""
    has = frame["phash"].is_not_null().to_numpy()
    rows = np.nonzero(has)[0]
    family = config.family_threshold or 0
    colour = config.colour_threshold or 0
    i, j, d = near_pairs(frame["phash"].to_numpy()[has].astype(np.uint64), max(config.threshold, family, colour))
    i, j = rows[i], rows[j]
    keep = d <= config.threshold
    if family > config.threshold:
        fam = family_labels(frame["key"].to_numpy(), frame["parent_id"].to_numpy())
        keep |= (fam[i] == fam[j]) & (d <= family)
    if colour > config.threshold:
        wide = np.nonzero(~keep & (d <= colour))[0]
        signatures = _colour_rows(frame["colour"], np.unique(np.concatenate([i[wide], j[wide]])))
        keep[wide] = colour_l1(signatures(i[wide]), signatures(j[wide])) <= config.colour_distance
    return i[keep], j[keep], 2 + d[keep]


def _colour_rows(column: pl.Series, rows: np.ndarray):
    """A lookup row → colour signature (uint8 vector) for the few rows that need one."""
    table = np.zeros((len(rows), COLOUR_BINS), dtype=np.uint8)
    for k, value in enumerate(column.gather(rows).to_list()):
        if value is not None:
            table[k] = np.frombuffer(value, dtype=np.uint8)
    return lambda wanted: table[np.searchsorted(rows, wanted)]


def _keep(frame: pl.DataFrame, labels: np.ndarray, i: np.ndarray, j: np.ndarray, rank: np.ndarray,
          config: DedupConfig) -> pl.DataFrame:
    sizes = np.bincount(labels, minlength=len(labels))
    grouped = frame.select("key", "metric", "area").with_columns(
        _label=pl.Series(labels), _size=pl.Series(sizes[labels])).with_row_index("_i")
    grouped = grouped.filter(pl.col("_size") > 1)
    if grouped.height == 0:
        return pl.DataFrame(schema=GROUP_SCHEMA)
    best = grouped.sort(["_label", "metric", "area", "key"], descending=[False, True, True, False])
    kept = best.group_by("_label", maintain_order=True).agg(pl.col("key").first().alias("group"))
    closest = _closest_link(len(labels), i, j, rank)
    link = pl.Series(closest)
    out = grouped.join(kept, on="_label").with_columns(
        kept=pl.col("key") == pl.col("group"),
        _rank=link.gather(grouped["_i"]) if len(link) else pl.lit(None, dtype=pl.Int64),
    )
    names = pl.when(pl.col("_rank") == 0).then(pl.lit("md5")).when(pl.col("_rank") == 1).then(pl.lit("pixels")) \
        .otherwise(pl.lit("phash"))
    return out.select(
        "key", "group", "kept", link=names,
        distance=pl.when(pl.col("_rank") >= 2).then(pl.col("_rank") - 2).otherwise(0),
    ).sort("key").cast(GROUP_SCHEMA)


def _closest_link(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Per row, the best rank among its links (md5 < pixels < smallest phash distance)."""
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, i, rank)
    np.minimum.at(best, j, rank)
    return best


@dataclass(frozen=True)
class DedupResult:
    groups: pl.DataFrame  # GROUP_SCHEMA
    hashed: int
    errors: int  # files the decode refused (left to the image stage)

    def rejects(self) -> dict[int, str]:
        """key → detail of every post that is not kept."""
        dup = self.groups.filter(~pl.col("kept"))
        return {k: _detail(g, link, d) for k, g, link, d in dup.select("key", "group", "link", "distance").iter_rows()}

    def summary(self) -> dict[str, Any]:
        g = self.groups
        return {"hashed": self.hashed, "decode_errors": self.errors,
                "groups": int(g["group"].n_unique()) if g.height else 0,
                "duplicates": int((~g["kept"]).sum()) if g.height else 0,
                "by_link": dict(sorted(g.filter(~pl.col("kept")).group_by("link").len().iter_rows()))}


def _detail(kept: int, link: str, distance: int) -> str:
    how = f"phash distance {distance}" if link == "phash" else f"same {link}"
    return f"duplicate of post {kept} ({how})"


def find_duplicates(db: DanbooruDB, plan: Any, config: DedupConfig, executor: Any, cache_dir: Path,
                    *, max_pixels: int, progress: bool = False) -> DedupResult:
    """Hash (cached), link and group the plan's posts by `config`; nothing is removed here."""
    hashes = compute_hashes(plan, config, executor, cache_dir, max_pixels, progress)
    facts = post_facts(db, hashes["key"].to_list(), config.keep)
    groups = group_duplicates(hashes, facts, config)
    return DedupResult(groups, hashes.height, int(hashes["error"].is_not_null().sum()))


def drop_duplicates(plan: Any, result: DedupResult) -> Any:
    """The plan without the posts that are not kept; they become rejects `duplicate`."""
    from kohaku_data.assembly.plan import BuildPlan

    details = result.rejects()
    if not details:
        return plan
    from kohaku_data.assembly.plan import items_of

    is_dup = pl.col("key").is_in(pl.Series(list(details), dtype=pl.Int64).implode())
    dropped = [{"key": item.key, "source": item.entry.name, "reason": "duplicate", "detail": details[item.key]}
               for item in items_of(plan.source, plan.frame.filter(is_dup))]
    return BuildPlan(plan.source, plan.frame.filter(~is_dup), plan.rejects + dropped)


def dedup_plan(db: DanbooruDB, plan: Any, recipe: Any, executor: Any, cache_dir: Path,
               progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """The builder's hook: (plan without duplicates, summary for stats.json); a no-op when the
    recipe's dedup policy is off."""
    if recipe.dedup.policy == "off":
        return plan, {}
    result = find_duplicates(db, plan, recipe.dedup, executor, cache_dir,
                             max_pixels=recipe.image.max_pixels, progress=progress)
    return drop_duplicates(plan, result), {"policy": recipe.dedup.policy, **result.summary()}
