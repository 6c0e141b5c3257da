"""What a build of a recipe will do, without opening an image (`kdata recipe check`, `kdata build --dry-run`).

From the DB: the posts the query selects; from the source listing and the plan: which files
become samples and which are refused before any image is opened (`file_without_post`,
`post_without_file`, the source's own refusals); from the DB's recorded image sizes: the
buckets the samples will land in and how many images will be `too_small` — a prediction (a file
that is a resized copy has other sizes) — and a rough shard count.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kohaku_data.assembly.plan import make_plan
from kohaku_data.config import Recipe
from kohaku_data.db.handle import DanbooruDB

# Stored bytes per bucket pixel, a rough figure for lossless anime art (WebP ~1.1, PNG ~1.5):
# only the shard estimate uses it, and says so.
_BYTES_PER_PIXEL = {"webp": 1.1, "png": 1.5}
_CHUNK = 200_000


@dataclass
class Preview:
    recipe: Recipe
    posts: int | None = None  # posts the query selects (every post without a query)
    samples: int | None = None  # plan items: files of selected posts (given a source)
    rejects: dict[str, int] = field(default_factory=dict)  # refused by the plan, by reason
    too_small: int = 0  # predicted from the DB's image sizes
    unknown_size: int = 0  # plan posts the DB has no size for
    buckets: Counter[str] = field(default_factory=Counter)  # predicted "WxH" → samples
    bucket_count: int = 0  # buckets the preset has
    shards: int | None = None  # rough estimate
    bytes: int | None = None  # rough estimate


def preview(recipe: Recipe, db: DanbooruDB | None, source=None) -> Preview:
    """The preview of `recipe` (DB and source optional: each adds what it can tell)."""
    from kohaku_data.images.buckets import bucket_resolutions

    result = Preview(recipe, bucket_count=len(bucket_resolutions(recipe.image.bucket_preset())))
    if db is None:
        return result
    result.posts = _selected(db, recipe)
    if source is None:
        return result
    plan = make_plan(db, source, recipe)
    result.samples = len(plan)
    result.rejects = dict(Counter(row["reason"] for row in plan.rejects).most_common())
    _predict_images(db, recipe, plan.keys, result)
    return result


def _selected(db: DanbooruDB, recipe: Recipe) -> int:
    if not recipe.query.strip():  # every live post, as make_plan and `kdata query ""` select
        return int(db.connection().execute("SELECT count(*) FROM post WHERE is_deleted IS NOT 1").fetchone()[0])
    from kohaku_data.assembly.plan import _query_stream

    return len(set(_query_stream(db, recipe.query)))


def _predict_images(db: DanbooruDB, recipe: Recipe, keys: np.ndarray, result: Preview) -> None:
    """Buckets and too_small from the DB's sizes, one decision per distinct size."""
    from kohaku_data.images import resize
    from kohaku_data.images.buckets import bucket_resolutions, choose_bucket

    sizes = _sizes(db, keys)
    result.unknown_size = len(keys) - int(sizes["n"].sum())
    image = recipe.image
    buckets = bucket_resolutions(image.bucket_preset())
    pixels = 0
    for w, h, n in sizes.iter_rows():
        bucket = choose_bucket((w, h), buckets)
        if resize.plan_cover((w, h), bucket).scale > 1.0 and not image.upscale and image.too_small == "reject":
            result.too_small += n
            continue
        result.buckets[f"{bucket[0]}x{bucket[1]}"] += n
        pixels += bucket[0] * bucket[1] * n
    per_pixel = _BYTES_PER_PIXEL.get(image.codec_preset().format, 1.2)
    result.bytes = int(pixels * per_pixel)
    samples = sum(result.buckets.values())
    by_bytes = -(-result.bytes // recipe.shard_max_bytes) if samples else 0
    by_count = -(-samples // recipe.shard_max_samples) if recipe.shard_max_samples and samples else 0
    result.shards = max(by_bytes, by_count)


def _sizes(db: DanbooruDB, keys: np.ndarray) -> pl.DataFrame:
    """(width, height, posts) of these posts, grouped; posts without a positive size left out."""
    conn = db.connection()
    counts: Counter[tuple[int, int]] = Counter()
    for start in range(0, len(keys), _CHUNK):
        wanted = json.dumps(keys[start:start + _CHUNK].tolist())
        for w, h, n in conn.execute(
                "SELECT image_width, image_height, count(*) FROM post WHERE id IN (SELECT value FROM json_each(?)) "
                "AND image_width > 0 AND image_height > 0 GROUP BY 1, 2", [wanted]):
            counts[(int(w), int(h))] += n
    return pl.DataFrame([(w, h, n) for (w, h), n in sorted(counts.items())],
                        schema={"w": pl.Int64, "h": pl.Int64, "n": pl.Int64}, orient="row")
