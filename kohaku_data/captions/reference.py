"""Plain per-post reference implementation of the caption rules (for tests, not for speed).

Written straight from the rules in `__init__.py` and `thresholds.py`, with one query per post
and numpy's own percentile for the thresholds; the vectorised engine must agree with it.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from kohaku_data.captions.thresholds import RATING_NAMES, Thresholds
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:\Z|[T ])")
_MASK = (1 << 64) - 1
TYPE_NAMES = ("general", "artist", "character", "copyright", "meta")


def written_date(created_at: str | None, year_min: int) -> str | None:
    if created_at is None:
        return None
    match = _DATE.match(created_at)
    if not match:
        return None
    try:
        day = datetime.date.fromisoformat(match.group(1))
    except ValueError:
        return None
    return match.group(1) if day.year >= year_min else None


def _eligible(date: str | None, cutoff: str | None) -> bool:
    return cutoff is None or (date is not None and date <= cutoff)


def reference_thresholds(db: DanbooruDB, config: CaptionConfig) -> Thresholds:
    rows = db.connection().execute(f"SELECT rating, {config.quality_metric}, created_at FROM post").fetchall()
    groups: dict[str, list[float]] = {}
    dates: list[str] = []
    for rating, metric, created_at in rows:
        date = written_date(created_at, config.year_min)
        if date is not None:
            dates.append(date)
        if not 0 <= rating <= 3 or not _eligible(date, config.quality_cutoff_date):
            continue
        groups.setdefault(RATING_NAMES[rating], []).append(metric)
        if config.quality_cohort == "rating_year" and date is not None:
            groups.setdefault(f"{RATING_NAMES[rating]}:{int(date[:4])}", []).append(metric)
    by_rating, by_cohort, counts = {}, {}, {}
    for key, values in groups.items():
        quantiles = tuple(float(np.percentile(values, p, method="linear")) for p in config.quality_percentiles)
        if ":" not in key:
            by_rating[key] = quantiles
        elif len(values) >= config.cohort_min_posts:
            by_cohort[key] = quantiles
        else:
            continue
        counts[key] = len(values)
    return Thresholds(
        metric=config.quality_metric, percentiles=tuple(float(p) for p in config.quality_percentiles),
        by_rating=by_rating, by_cohort=by_cohort, year_edges=_year_edges(dates, config),
        cutoff_date=config.quality_cutoff_date, counts=counts,
    )


def _year_edges(dates: list[str], config: CaptionConfig) -> tuple[str, ...]:
    floor = f"{config.year_min:04d}-01-01"
    if config.year_mode == "bins" or not dates:
        return tuple(f"{y:04d}-01-01" for y in config.year_bins) + (floor,)
    days = np.array([datetime.date.fromisoformat(d).toordinal() for d in dates])
    edges = [datetime.date.fromordinal(int(np.percentile(days, p, method="lower"))).isoformat()
             for p in config.year_percentiles]
    return tuple(edges) + (floor,)


def _quality(rating: str | None, year: int | None, value: float, date: str | None,
             config: CaptionConfig, th: Thresholds) -> str | None:
    if not config.quality or rating is None or not _eligible(date, th.cutoff_date):
        return None
    limits = th.by_cohort.get(f"{rating}:{year}") if year is not None else None
    limits = limits if limits is not None else th.by_rating.get(rating)
    if limits is None:
        return None
    for band, limit in zip(config.quality_bands, limits):
        if value > limit:
            return band
    return config.quality_bands[-1]


def _year_tag(date: str | None, config: CaptionConfig, th: Thresholds) -> str | None:
    if not config.year or date is None:
        return None
    for tag, edge in zip(config.year_tags, th.year_edges):
        if date >= edge:
            return tag
    return None


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _shuffle_key(seed: int, post_id: int, tag_id: int) -> int:
    per_post = _splitmix64((post_id & _MASK) ^ _splitmix64(seed & _MASK))
    return _splitmix64(per_post ^ (tag_id & _MASK))


def _display(name: str, config: CaptionConfig) -> str:
    if config.underscore_to_space and len(name) > 3:
        name = name.replace("_", " ")
    if config.escape_parens:
        name = name.replace("(", "\\(").replace(")", "\\)")
    return name


def _group(tag: dict, config: CaptionConfig) -> str | None:
    name, kind = tag["name"], TYPE_NAMES[tag["type"]] if 0 <= tag["type"] <= 4 else None
    if not name.strip():
        return None
    if kind == "meta" and any(w in name for w in config.drop_meta_containing):
        return None
    if kind == "artist" and any(w in name for w in config.drop_artist_containing):
        return None
    if kind == "general" and name in config.keep_tags:
        return "keep"
    return kind


def _sort_key(tag: dict, post_id: int, config: CaptionConfig) -> Any:
    if config.tag_order == "popularity":
        return (-tag["popularity"], tag["name"])
    if config.tag_order == "db":
        return tag["rid"]
    if config.tag_order == "alpha":
        return tag["name"]
    return (_shuffle_key(config.shuffle_seed, post_id, tag["tag_id"]), tag["tag_id"])


def reference_caption(db: DanbooruDB, post_id: int, config: CaptionConfig, th: Thresholds) -> dict | None:
    conn = db.connection()
    row = conn.execute(
        "SELECT id, created_at, rating, score, fav_count, image_width, image_height, md5, file_ext "
        "FROM post WHERE id = ?", (post_id,),
    ).fetchone()
    if row is None:
        return None
    keys = ("id", "created_at", "rating", "score", "fav_count", "image_width", "image_height", "md5", "file_ext")
    post = dict(zip(keys, row))
    black = {b.strip().replace(" ", "_") for b in config.blacklist if b.strip()}
    tags = [
        dict(zip(("rid", "tag_id", "name", "type", "popularity"), t))
        for t in conn.execute(
            "SELECT r.id, t.id, t.name, t.type, t.popularity FROM posttagrelation r "
            "JOIN tag t ON t.id = r.tag_id WHERE r.post_id = ?", (post_id,),
        )
    ]
    tags = [t for t in tags if t["name"] not in black]
    date = written_date(post["created_at"], config.year_min)
    year = int(date[:4]) if date else None
    rating = RATING_NAMES[post["rating"]] if 0 <= post["rating"] <= 3 else None
    value = post[th.metric]
    post["rating"] = rating
    post["rating_tag"] = config.rating_tags.get(rating) if (config.rating and rating) else None
    post["quality"] = _quality(rating, year, value, date, config, th)
    post["year_tag"] = _year_tag(date, config, th)

    by_pop = sorted(tags, key=lambda t: (-t["popularity"], t["name"]))
    for i, kind in enumerate(TYPE_NAMES):
        post[f"tags_{kind}"] = [t["name"] for t in by_pop if t["type"] == i]

    ordered = sorted(tags, key=lambda t: _sort_key(t, post_id, config))
    groups: dict[str | None, list[str]] = {}
    for t in ordered:
        groups.setdefault(_group(t, config), []).append(_display(t["name"], config))
    keep = [n for g in ("keep", "character", "copyright", "artist") for n in groups.get(g, [])]
    rest = [n for g in ("general", "meta") for n in groups.get(g, [])]
    rest += [x for x in (post["year_tag"], post["rating_tag"], post["quality"]) if x is not None]
    post["caption"] = _layout(keep, rest, config)
    return post


def _layout(keep: list[str], rest: list[str], config: CaptionConfig) -> str:
    sep = config.separator
    if config.keep_separator is None:
        return sep.join(keep + rest)
    head = sep.join(keep) + sep if keep else ""
    return head + config.keep_separator + sep.join(rest)


def reference_captions(db: DanbooruDB, ids: Sequence[int], config: CaptionConfig, th: Thresholds) -> list[dict]:
    """One dict per existing post of `ids`, ordered by id (same keys as the caption frame)."""
    out = [reference_caption(db, i, config, th) for i in sorted(set(ids))]
    return [p for p in out if p is not None]
