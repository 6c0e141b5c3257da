"""Caption layout with array operations: one chunk of posts (+ their tags) → caption frame.

No Python loop per post. A chunk's relations are integer arrays (post row `pi`, tag row `ti`
in the prepared tag table); each list is one numpy argsort of a packed integer key (post,
group, in-group order), then the names are gathered once and cut into per-post lists by a
group_by on the already sorted post index (polars' sorted fast path), then `list.join`.
Strings never move during the sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from kohaku_data.captions.frame import index_of
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


@dataclass(frozen=True)
class ChunkRows:
    """One chunk's post-tag relations resolved against the prepared tag table (parallel arrays)."""

    pi: np.ndarray  # row index of the post in the chunk
    ti: np.ndarray  # row index of the tag in `tags` (prepare_tags output, any row order)
    rid: np.ndarray | None  # relation id, for tag_order = "db"

    def take(self, mask: np.ndarray) -> "ChunkRows":
        return ChunkRows(self.pi[mask], self.ti[mask], None if self.rid is None else self.rid[mask])


def resolve_tags(tags: pl.DataFrame, tag_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, row) of each tag id in `tags` sorted by tag_id; missing or blacklisted tags are
    not found (the reference joins relations with the tag table, then drops blacklisted)."""
    return index_of(tags["tag_id"].to_numpy(), tag_ids)


def _argsort_rows(primary: np.ndarray, secondary: list[np.ndarray]) -> np.ndarray:
    """Row order by (primary, *secondary), all integer arrays."""
    if not len(primary):
        return np.empty(0, dtype=np.int64)
    if len(secondary) == 1 and secondary[0].min() >= 0:
        span = int(secondary[0].max()) + 1
        if (int(primary.max()) + 1) * span < (1 << 62):
            # One packed int64 key: a single numpy sort, 5x faster than a multi-column sort.
            return np.argsort(primary * span + secondary[0].astype(np.int64), kind="stable")
    order = np.lexsort(secondary[::-1]) if secondary else np.arange(len(primary))
    return order[np.argsort(primary[order], kind="stable")]


def _in_group_keys(
    rows: ChunkRows, tags: pl.DataFrame, post_ids: np.ndarray, config: CaptionConfig
) -> list[np.ndarray]:
    """In-group sort keys of each tag row for config.tag_order (ascending)."""
    if config.tag_order == "popularity":
        return [tags["_prank"].to_numpy()[rows.ti]]
    if config.tag_order == "alpha":
        return [tags["_arank"].to_numpy()[rows.ti]]
    if config.tag_order == "db":
        return [rows.rid]
    tag_ids = tags["tag_id"].to_numpy()[rows.ti]
    return [shuffle_keys(config.shuffle_seed, post_ids[rows.pi], tag_ids), tag_ids]


def _lists(pi: np.ndarray, values: pl.Series, name: str) -> pl.DataFrame:
    """(_pi, name: list) per post index, the values in their given order (`pi` sorted)."""
    frame = pl.DataFrame({"_pi": pi.astype(np.uint32), name: values})
    # Sorted keys: group_by cuts contiguous runs instead of hashing (10x faster).
    return frame.with_columns(pl.col("_pi").set_sorted()).group_by("_pi", maintain_order=True).agg(name)


# ---------------------------------------------------------------------------------------------
# Assembling
# ---------------------------------------------------------------------------------------------
def _raw_lists(rows: ChunkRows, tags: pl.DataFrame) -> list[pl.DataFrame]:
    """tags_<type> per post index `_pi` (one frame per type): raw names, popularity order."""
    order = _argsort_rows(rows.pi, [tags["_prank"].to_numpy()[rows.ti]])
    pi, ti = rows.pi[order], rows.ti[order]
    kind = tags["type"].to_numpy()[ti]
    out = []
    for t, col in TAG_COLUMNS.items():
        mine = kind == t
        names = tags["name"].gather(ti[mine])
        out.append(_lists(pi[mine], names, col))
    return out


def _extra_rows(frame: pl.DataFrame, config: CaptionConfig) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """(post index, group, text) of the keep-separator marker and the year, rating and quality
    tags of each post: rows that sort into the caption like tags."""
    parts = [(G_YEAR, frame["year_tag"]), (G_RATING, frame["rating_tag"]), (G_QUALITY, frame["quality"])]
    if config.keep_separator is not None:
        parts.append((G_MARK, pl.repeat(_MARK, frame.height, eager=True)))
    post_index = frame["_pi"].to_numpy()
    pis, groups, texts = [], [], []
    for group, values in parts:
        present = values.is_not_null().to_numpy()
        pis.append(post_index[present])
        groups.append(np.full(int(present.sum()), group, dtype=np.int64))
        texts.append(values.filter(values.is_not_null()).cast(pl.String))
    return np.concatenate(pis), np.concatenate(groups), pl.concat(texts)


def _captions(
    rows: ChunkRows, tags: pl.DataFrame, frame: pl.DataFrame, post_ids: np.ndarray, config: CaptionConfig
) -> pl.DataFrame:
    """caption per post index `_pi` (`post_ids[_pi]`: its id): tag rows + extra rows sorted,
    one string join per post."""
    group = tags["_g"].fill_null(-1).to_numpy()[rows.ti].astype(np.int64)
    shown = group >= 0
    rows, group = rows.take(shown), group[shown]
    keys = _in_group_keys(rows, tags, post_ids, config)
    extra_pi, extra_group, extra_text = _extra_rows(frame, config)
    pi = np.concatenate([rows.pi, extra_pi])
    group = np.concatenate([group, extra_group])
    keys = [np.concatenate([k, np.zeros(len(extra_pi), dtype=k.dtype)]) for k in keys]
    order = _argsort_rows(pi * 16 + group, keys)
    # Strings are gathered once, in caption order: tag rows index `_disp`, extra rows follow it.
    source = np.concatenate([rows.ti, len(tags) + np.arange(len(extra_pi))])
    text = pl.concat([tags["_disp"], extra_text]).gather(source[order])
    joined = _lists(pi[order], text, "caption")
    text = pl.col("caption").list.join(config.separator)
    if config.keep_separator is not None:
        # hakubooru: keep + sep + "|||" + rest (no separator after "|||").
        text = text.str.replace(_MARK + config.separator, config.keep_separator, literal=True)
        text = text.str.replace(_MARK, config.keep_separator, literal=True)
    return joined.select("_pi", caption=text)


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
    posts: pl.DataFrame, tags: pl.DataFrame, rows: ChunkRows, config: CaptionConfig, thresholds: Thresholds
) -> pl.DataFrame:
    """posts (POST_SCHEMA, ordered by id) + tags (`prepare_tags`) + the chunk's relations →
    caption frame, one row per post in the same order."""
    frame = post_columns(posts.with_row_index("_pi"), config, thresholds)
    parts = [*_raw_lists(rows, tags), _captions(rows, tags, frame, posts["id"].to_numpy(), config)]
    for part in parts:
        frame = frame.join(part, on="_pi", how="left")
    empty = pl.lit([], dtype=pl.List(pl.String))
    frame = frame.with_columns(
        caption=pl.col("caption").fill_null(""), **{c: pl.col(c).fill_null(empty) for c in TAG_COLUMNS.values()}
    )
    return frame.sort("_pi").select(OUTPUT_COLUMNS)
