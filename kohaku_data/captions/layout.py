"""Caption layout with column operations: one chunk of posts (+ their tags) → caption frame.

No Python loop per post: tags are (post, tag) rows, sorted once, grouped per post into list
columns, joined into strings with `list.join` / `concat_str`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from kohaku_data.captions.thresholds import RATING_NAMES, Thresholds, add_quality, add_year_tag, with_dates
from kohaku_data.config import CaptionConfig
from kohaku_data.db.enums import TagType

# Caption groups, in caption order: kept part (0-3), then the rest (4-5).
G_KEEP, G_CHARACTER, G_COPYRIGHT, G_ARTIST, G_GENERAL, G_META = range(6)
TAG_COLUMNS = {t: f"tags_{t.category_name}" for t in TagType}
OUTPUT_COLUMNS = (
    "id", "caption", "rating", "rating_tag", "quality", "year_tag",
    *TAG_COLUMNS.values(),
    "created_at", "score", "fav_count", "image_width", "image_height", "md5", "file_ext",
)
_MASK = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# Seeded shuffle: splitmix64 keys, identical in numpy (here) and plain Python (reference.py)
# ---------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shuffle_keys(seed: int, post_ids: np.ndarray, tag_ids: np.ndarray) -> np.ndarray:
    """Sort key of each (post, tag): a fixed function of (seed, post id, tag id)."""
    base = _splitmix64(np.array([seed & _MASK], dtype=np.uint64))[0]
    per_post = _splitmix64(post_ids.astype(np.uint64) ^ base)
    return _splitmix64(per_post ^ tag_ids.astype(np.uint64))


# ---------------------------------------------------------------------------------------------
# Per-tag columns
# ---------------------------------------------------------------------------------------------
def display_name(config: CaptionConfig) -> pl.Expr:
    """The name as written in the caption: `_` → space (names > 3 chars), optional `\\(`."""
    name = pl.col("name")
    if config.underscore_to_space:
        name = pl.when(name.str.len_chars() > 3).then(name.str.replace_all("_", " ", literal=True)).otherwise(name)
    if config.escape_parens:
        name = name.str.replace_all("(", r"\(", literal=True).str.replace_all(")", r"\)", literal=True)
    return name


def _contains_any(words: tuple[str, ...]) -> pl.Expr:
    if not words:
        return pl.lit(False)
    return pl.any_horizontal([pl.col("name").str.contains(w, literal=True) for w in words])


def caption_group(config: CaptionConfig) -> pl.Expr:
    """Caption group of each tag row; null = not in the caption."""
    t = pl.col("type")
    return (
        pl.when(pl.col("name").str.strip_chars() == "").then(None)
        .when((t == TagType.META) & _contains_any(config.drop_meta_containing)).then(None)
        .when((t == TagType.ARTIST) & _contains_any(config.drop_artist_containing)).then(None)
        .when((t == TagType.GENERAL) & pl.col("name").is_in(list(config.keep_tags))).then(G_KEEP)
        .when(t == TagType.GENERAL).then(G_GENERAL)
        .when(t == TagType.CHARACTER).then(G_CHARACTER)
        .when(t == TagType.COPYRIGHT).then(G_COPYRIGHT)
        .when(t == TagType.ARTIST).then(G_ARTIST)
        .when(t == TagType.META).then(G_META)
        .otherwise(None)
        .cast(pl.Int8)
    )


def blacklist_names(config: CaptionConfig) -> list[str]:
    """Blacklist entries as DB names (`long hair` and `long_hair` both mean `long_hair`)."""
    return [b.strip().replace(" ", "_") for b in config.blacklist if b.strip()]


def prepare_tags(tags: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
    """Per-tag work done once per tag, not per post-tag row: blacklist, caption group, display
    name, and integer ranks for popularity order (ties by name) and alphabetical order."""
    black = blacklist_names(config)
    if black:
        tags = tags.filter(~pl.col("name").is_in(black))
    return tags.with_columns(
        _g=caption_group(config),
        _disp=display_name(config),
        _prank=pl.struct(pl.col("popularity").neg(), "name").rank("ordinal").cast(pl.Int64),
        _arank=pl.col("name").rank("ordinal").cast(pl.Int64),
    ).drop("popularity")


def order_keys(rel: pl.DataFrame, config: CaptionConfig) -> tuple[pl.DataFrame, list[str]]:
    """Add the in-group sort key columns for config.tag_order (ascending); return (frame, keys)."""
    if config.tag_order == "popularity":
        return rel, ["_prank"]
    if config.tag_order == "db":
        return rel, ["rid"]
    if config.tag_order == "alpha":
        return rel, ["_arank"]
    keys = shuffle_keys(config.shuffle_seed, rel["id"].to_numpy(), rel["tag_id"].to_numpy())
    return rel.with_columns(_key=pl.Series(keys, dtype=pl.UInt64)), ["_key", "tag_id"]


# ---------------------------------------------------------------------------------------------
# Assembling
# ---------------------------------------------------------------------------------------------
def _raw_lists(rel: pl.DataFrame) -> pl.DataFrame:
    """tags_<type>: raw names per type, popularity order (ties by name)."""
    ordered = rel.sort(["id", "_prank"])
    return ordered.group_by("id", maintain_order=True).agg(
        pl.col("name").filter(pl.col("type") == t).alias(col) for t, col in TAG_COLUMNS.items()
    )


def _caption_lists(rel: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
    """_keep and _rest: display names per post in caption order."""
    rel, keys = order_keys(rel.filter(pl.col("_g").is_not_null()), config)
    ordered = rel.sort(["id", "_g", *keys])
    grouped = ordered.group_by("id", maintain_order=True).agg(
        pl.col("_disp").filter(pl.col("_g") == g).alias(f"_g{g}") for g in range(6)
    )
    return grouped.select(
        "id",
        _keep=pl.concat_list([f"_g{g}" for g in (G_KEEP, G_CHARACTER, G_COPYRIGHT, G_ARTIST)]),
        _rest=pl.concat_list([f"_g{g}" for g in (G_GENERAL, G_META)]),
    )


def _caption_text(config: CaptionConfig) -> pl.Expr:
    sep = config.separator
    extras = pl.concat_list(["year_tag", "rating_tag", "quality"]).list.drop_nulls()
    rest = pl.concat_list([pl.col("_rest"), extras])
    keep = pl.col("_keep")
    if config.keep_separator is None:
        return pl.concat_list([keep, rest]).list.join(sep)
    # hakubooru: keep + sep + "|||" + rest (no separator after "|||"); an empty kept part
    # gives just "|||" + rest rather than a caption starting with the separator.
    head = pl.when(keep.list.len() > 0).then(keep.list.join(sep) + sep).otherwise(pl.lit(""))
    return pl.concat_str([head, pl.lit(config.keep_separator), rest.list.join(sep)])


def post_columns(posts: pl.DataFrame, config: CaptionConfig, thresholds: Thresholds) -> pl.DataFrame:
    """rating, rating_tag, quality, year_tag of each post (no tags needed)."""
    frame = with_dates(posts, config)
    frame = add_year_tag(add_quality(frame, config, thresholds), config, thresholds)
    rating = pl.col("rating").replace_strict(dict(enumerate(RATING_NAMES)), default=None, return_dtype=pl.String)
    # after `rating` became its name
    rating_tag = pl.col("rating").replace_strict(config.rating_tags, default=None, return_dtype=pl.String)
    if not config.rating:
        rating_tag = pl.lit(None, dtype=pl.String)
    return frame.with_columns(rating=rating).with_columns(rating_tag=rating_tag)


def build_captions(
    posts: pl.DataFrame, rel: pl.DataFrame, config: CaptionConfig, thresholds: Thresholds
) -> pl.DataFrame:
    """posts (POST_SCHEMA) + rel (id, tag_id[, rid] joined with `prepare_tags`) → caption frame."""
    frame = post_columns(posts, config, thresholds)
    frame = frame.join(_raw_lists(rel), on="id", how="left").join(_caption_lists(rel, config), on="id", how="left")
    empty = pl.lit([], dtype=pl.List(pl.String))
    fill = {c: pl.col(c).fill_null(empty) for c in (*TAG_COLUMNS.values(), "_keep", "_rest")}
    frame = frame.with_columns(**fill).with_columns(caption=_caption_text(config))
    return frame.sort("id").select(OUTPUT_COLUMNS)
