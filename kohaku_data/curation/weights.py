"""Repeat-factor sample weights (LVIS, Gupta et al. 2019) so rare artists/characters are not drowned.

For each tag c of the recipe's categories: f(c) = share of the dataset's samples carrying c,
r(c) = max(1, sqrt(threshold / f(c))). A sample's weight is the largest r(c) over its tags in
those categories (1.0 without any). A tag on fewer than `threshold` × N samples is repeated,
e.g. threshold 0.001 over 1M samples: an artist with 100 samples gets sqrt(1000/100) ≈ 3.16.
The weights are a function of the manifest's keys and the DB's tags only: deterministic.

`add_weights` writes them as the manifest's `weight` column (Float64; all 1.0 when the recipe
names no category) and returns the summary that goes into stats.json; the reader's sampler
(kohaku_data/train) draws a sample about weight / mean(weight) times per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.atomic import replacing
from kohaku_data.config import WeightConfig
from kohaku_data.db.enums import TagType
from kohaku_data.db.handle import DanbooruDB

_CHUNK = 50_000
_PARQUET = {"compression": "zstd", "compression_level": 3, "statistics": True, "row_group_size": 65_536}


def _type_codes(categories: tuple[str, ...]) -> list[int]:
    return [int(t) for t in TagType if t.category_name in categories]


def post_tags(db: DanbooruDB, keys: np.ndarray, categories: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(post id, tag id) of every distinct relation of `keys` whose tag type is in `categories`."""
    conn = db.connection()
    types = json.dumps(_type_codes(categories))
    posts, tags = [], []
    for start in range(0, len(keys), _CHUNK):
        wanted = json.dumps(keys[start:start + _CHUNK].tolist())
        rows = conn.execute(
            "SELECT group_concat(r.post_id), group_concat(r.tag_id) FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
            "WHERE r.post_id IN (SELECT value FROM json_each(?)) AND t.type IN (SELECT value FROM json_each(?))",
            (wanted, types),
        ).fetchone()
        if rows[0]:
            posts.append(np.array(rows[0].split(","), dtype=np.int64))
            tags.append(np.array(rows[1].split(","), dtype=np.int64))
    if not posts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(posts), np.concatenate(tags)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def repeat_factor_weights(keys: np.ndarray, post_id: np.ndarray, tag_id: np.ndarray,
                          threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight per key, tag ids, their repeat factor): `keys` sorted unique, pairs distinct."""
    weights = np.ones(len(keys), dtype=np.float64)
    if not len(keys) or not len(tag_id):
        return weights, np.empty(0, np.int64), np.empty(0, np.float64)
    tags, tag_index, counts = np.unique(tag_id, return_inverse=True, return_counts=True)
    factor = np.maximum(1.0, np.sqrt(threshold / (counts / len(keys))))
    position = np.searchsorted(keys, post_id)
    np.maximum.at(weights, position, factor[tag_index])
    return weights, tags, factor


def add_weights(manifest: Path, db: DanbooruDB, config: WeightConfig) -> dict[str, Any]:
    """Write the `weight` column into `manifest` (atomically); the summary for stats.json."""
    frame = pl.read_parquet(manifest)
    keys = frame["key"].to_numpy()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    weights = np.ones(len(keys), dtype=np.float64)
    summary: dict[str, Any] = {"categories": list(config.categories), "threshold": config.threshold}
    if config.categories and len(keys):
        post_id, tag_id = post_tags(db, sorted_keys, config.categories)
        w, tags, factor = repeat_factor_weights(sorted_keys, post_id, tag_id, config.threshold)
        weights[order] = w
        summary.update(_summary(db, weights, tags, factor))
    with replacing(manifest) as tmp:
        frame.with_columns(weight=pl.Series(weights, dtype=pl.Float64)).write_parquet(tmp, **_PARQUET)
    return summary


def _summary(db: DanbooruDB, weights: np.ndarray, tags: np.ndarray, factor: np.ndarray) -> dict[str, Any]:
    top = np.lexsort((tags, -factor))[:10]
    names = dict(db.connection().execute(
        "SELECT id, name FROM tag WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(tags[top].tolist()),)))
    return {
        "samples_repeated": int((weights > 1).sum()),
        "weight_min": float(weights.min()), "weight_max": float(weights.max()),
        "weight_mean": round(float(weights.mean()), 6),
        "epoch_size": round(float(weights.sum()), 3),  # samples drawn per epoch at these weights
        "tags_repeated": int((factor > 1).sum()),
        "top_tags": [{"tag": names.get(int(t), str(t)), "repeat_factor": round(float(f), 6)}
                     for t, f in zip(tags[top], factor[top])],
    }
