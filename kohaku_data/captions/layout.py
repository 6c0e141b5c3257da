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
G_KEEP, G_CHARACTER, G_COPYRIGHT, G_ARTIST, G_GENERAL, G_META = 0, 1, 2, 3, 5, 6
# Rows added per post so that one string join per post writes the whole caption:
G_MARK, G_YEAR, G_RATING, G_QUALITY = 4, 7, 8, 9
_MARK = "\x00"  # stands for the keep separator until the join; never in a tag name
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
    """tags_<type> per post index `_pi`: raw names per type, popularity order (ties by name)."""
    ordered = rel.select("_pi", "type", "name", "_prank")
    ordered = ordered[ordered.select(pl.arg_sort_by(["_pi", "_prank"])).to_series()]
    out = pl.DataFrame({"_pi": ordered["_pi"].unique()})
    for t, col in TAG_COLUMNS.items():
        # group_by keeps the row order inside each group: the lists stay in popularity order.
        part = ordered.filter(pl.col("type") == t).group_by("_pi").agg(pl.col("name").alias(col))
        out = out.join(part, on="_pi", how="left")
    return out


def _extra_rows(frame: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
    """Per post: the keep-separator marker and the year, rating and quality tags, as tag rows."""
    parts = [(G_YEAR, "year_tag"), (G_RATING, "rating_tag"), (G_QUALITY, "quality")]
    rows = [frame.select("_pi", _g=pl.lit(g, dtype=pl.Int8), _disp=pl.col(c)).drop_nulls("_disp") for g, c in parts]
    if config.keep_separator is not None:
        rows.append(frame.select("_pi", _g=pl.lit(G_MARK, dtype=pl.Int8), _disp=pl.lit(_MARK)))
    return pl.concat(rows)


def _captions(rel: pl.DataFrame, frame: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
    """caption per post index `_pi`: tag rows + extra rows sorted, one string join per post."""
    rel, keys = order_keys(rel.filter(pl.col("_g").is_not_null()), config)
    rows = rel.select("_pi", "_g", "_disp", *keys)
    extra = _extra_rows(frame, config).with_columns(pl.lit(0, dtype=rows.schema[k]).alias(k) for k in keys)
    rows = pl.concat([rows, extra.select(rows.columns)])
    # Sort the integer keys only, then gather once: moving the strings in a frame sort is slow.
    rows = rows[rows.select(pl.arg_sort_by(["_pi", "_g", *keys])).to_series()]
    joined = rows.group_by("_pi").agg(caption=pl.col("_disp").str.join(config.separator))
    if config.keep_separator is not None:
        # hakubooru: keep + sep + "|||" + rest (no separator after "|||").
        text = pl.col("caption").str.replace(_MARK + config.separator, config.keep_separator, literal=True)
        joined = joined.with_columns(caption=text.str.replace(_MARK, config.keep_separator, literal=True))
    return joined


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
    """posts (POST_SCHEMA + `_pi` row index) + rel (`_pi`, id, tag_id[, rid] joined with
    `prepare_tags`) → caption frame."""
    frame = post_columns(posts, config, thresholds)
    frame = frame.join(_raw_lists(rel), on="_pi", how="left").join(_captions(rel, frame, config), on="_pi", how="left")
    empty = pl.lit([], dtype=pl.List(pl.String))
    frame = frame.with_columns(
        caption=pl.col("caption").fill_null(""), **{c: pl.col(c).fill_null(empty) for c in TAG_COLUMNS.values()}
    )
    return frame.sort("id").select(OUTPUT_COLUMNS)
