"""Caption thresholds, caption stats and the prepared tag table as DB summaries
(kohaku_data/db/summary.py).

Thresholds and stats are whole-DB scans (every post's rating, metric and date); the tag
table's per-tag columns (caption group, display name, popularity rank: a sort of every name)
cost seconds with Danbooru's ~1M tag names, in every caption run and every worker. All are
stored under a name made from the caption config (and, for stats, the thresholds), served while
the DB is unchanged. After a write, `refresh_caption_summaries` computes them again for the
default recipe and the shipped ones, reading the posts once per quality metric.
"""

from __future__ import annotations

import io
import sqlite3
from typing import Any

import polars as pl

from kohaku_data.captions.thresholds import Thresholds, read_metrics, thresholds_from_frame
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB
from kohaku_data.db import summary


def thresholds_name(config: CaptionConfig) -> str:
    return summary.config_key("thresholds", config)


def stats_name(config: CaptionConfig, thresholds: Thresholds) -> str:
    return summary.config_key("caption_stats", [config.model_dump(mode="json"), thresholds.to_dict()])


def cached_thresholds(db: DanbooruDB, config: CaptionConfig) -> Thresholds:
    """The stored thresholds of `config` if current, else computed from the posts (and stored)."""
    return summary.cached(db, thresholds_name(config),
                          lambda: thresholds_from_frame(read_metrics(db, config.quality_metric), config),
                          encode=Thresholds.to_dict, decode=Thresholds.from_dict)


def cached_caption_stats(db: DanbooruDB, config: CaptionConfig, thresholds: Thresholds) -> dict[str, Any]:
    from kohaku_data.captions import stats_from_frame

    return summary.cached(db, stats_name(config, thresholds),
                          lambda: stats_from_frame(read_metrics(db, thresholds.metric), config, thresholds))


def tag_columns_name(config: CaptionConfig) -> str:
    return summary.config_key("tag_columns", config)


# Below this many tags, preparing the table is quicker than storing and reading it back.
STORE_TAG_COLUMNS_FROM = 100_000


def stored_prepared_tags(conn: sqlite3.Connection, config: CaptionConfig) -> Any | None:
    """PreparedTags of the whole tag table from the stored tag columns, if current; else None."""
    from kohaku_data.captions.layout import prepare_tag_columns

    blob = summary.read_from(conn, tag_columns_name(config))
    if not isinstance(blob, bytes):
        return None
    return prepare_tag_columns(pl.read_ipc(io.BytesIO(blob)), config)


def _store_tag_columns(db: DanbooruDB, tags: pl.DataFrame, config: CaptionConfig) -> list[str]:
    from kohaku_data.captions.layout import tag_columns

    if tags.height < STORE_TAG_COLUMNS_FROM:
        return []
    buffer = io.BytesIO()
    tag_columns(tags, config).write_ipc(buffer, compression="lz4")
    name = tag_columns_name(config)
    return [name] if summary.store(db, name, buffer.getvalue()) else []


def standard_configs() -> list[CaptionConfig]:
    """The caption configs whose summaries are kept: the default recipe's and the shipped recipes'."""
    from kohaku_data.config import Recipe, load_recipe, shipped_recipes

    configs = {thresholds_name(c): c for c in (CaptionConfig(), Recipe().caption)}
    for path in shipped_recipes().values():
        try:
            config = load_recipe(path).caption
        except Exception:  # a broken shipped recipe must not stop an import; it fails where used
            continue
        configs.setdefault(thresholds_name(config), config)
    return list(configs.values())


def refresh_caption_summaries(db: DanbooruDB) -> list[str]:
    """Store thresholds, caption stats and (big tables) the tag columns of `standard_configs()`;
    one posts read per metric, one tag table read."""
    from kohaku_data.captions import stats_from_frame
    from kohaku_data.captions.frame import read_tag_table

    names: list[str] = []
    frames: dict[str, pl.DataFrame] = {}
    tags = read_tag_table(db.connection())
    for config in standard_configs():
        names += _store_tag_columns(db, tags, config)
        metric = config.quality_metric
        if metric not in frames:
            frames[metric] = read_metrics(db, metric)
        thresholds = thresholds_from_frame(frames[metric], config)
        stats = stats_from_frame(frames[metric], config, thresholds)
        if summary.store(db, thresholds_name(config), thresholds.to_dict()):
            names.append(thresholds_name(config))
        if summary.store(db, stats_name(config, thresholds), stats):
            names.append(stats_name(config, thresholds))
    return names
