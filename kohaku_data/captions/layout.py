"""Caption layout with array operations: one chunk of posts (+ their tags) → caption frame.

No Python loop per post. `prepare_tags` puts every text a chunk can hold (raw names, caption
texts, year/rating/quality tags) into one string table whose row order *is* the output order
inside a post. A chunk's elements are then packed int64 keys `(post << bits) | row`: one numpy
value sort orders every post's raw lists and caption at once, the strings are gathered once,
and one group_by on the already sorted post index (polars' sorted fast path) cuts them into
the `tags_*` lists and the caption list, which `list.join` writes. Strings never move during
the sort. Orders that depend on the post (`db`, `shuffle`) sort their caption rows first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.captions.frame import KeyIndex
from kohaku_data.captions.thresholds import RATING_NAMES, Thresholds, add_quality, add_year_tag, with_dates
from kohaku_data.config import CaptionConfig
from kohaku_data.db.enums import TagType

# Caption groups, in caption order: kept part (0-3), then the rest (4-5).
G_KEEP, G_CHARACTER, G_COPYRIGHT, G_ARTIST, G_GENERAL, G_META = 0, 1, 2, 3, 5, 6
# Rows added per post so that one string join per post writes the whole caption:
G_MARK, G_YEAR, G_RATING, G_QUALITY = 4, 7, 8, 9
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
    # One Aho-Corasick pass over the names, not one scan per word (15x less on a 1M-row table).
    return pl.col("name").str.contains_any(list(words))


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


def _tag_columns(tags: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
    """Per-tag work done once per tag, not per post-tag row: blacklist, caption group, display
    name, and integer ranks for popularity order (ties by name) and alphabetical order."""
    black = blacklist_names(config)
    if black:
        tags = tags.filter(~pl.col("name").is_in(black))
    # The alphabetical rank is a second sort of every name: made only for the order that uses it.
    alpha = {"_arank": pl.col("name").rank("ordinal").cast(pl.Int64)} if config.tag_order == "alpha" else {}
    return tags.with_columns(
        _g=caption_group(config),
        _disp=display_name(config),
        _prank=pl.struct(pl.col("popularity").neg(), "name").rank("ordinal").cast(pl.Int64),
        **alpha,
    ).drop("popularity")


CAPTION_CODE = len(TAG_COLUMNS)  # `codes` value of caption texts; raw names carry their tag type
# Sort key of an element that is not shown: above every real key (those stay below 2**61),
# and `(post << bits) | _HIDDEN == _HIDDEN`, so hidden elements sort to the end and are cut off.
_HIDDEN = (1 << 62) - 1


def token_cache_key(tokenizer: str, before: tuple[str, ...], after: tuple[str, ...], base: int) -> tuple:
    """Key on `PreparedTags.cache` of per-(strings row - base, slot) token counts of the texts
    `before[affix] + row text + after[affix]` (captions/variants.py `Pieces`)."""
    return ("tokens", tokenizer, before, after, base)


@dataclass(frozen=True)
class PreparedTags:
    """A tag table prepared for captions, and every string a caption frame can hold.

    `strings` is one table of texts, ordered so that sorting a post's elements by their row
    in it *is* the output order: first the raw names by (type, popularity) for the `tags_*`
    lists, then the caption texts by (caption group, in-group rank), with the keep separator
    and the year/rating/quality tags between the groups where they belong, then the same
    caption texts again with the keep separator in front (for the first one after it). A
    chunk is then one integer sort and one gather; strings never move during the sort."""

    tag_index: KeyIndex  # tag id → tag row (the table's tags sorted by id)
    # per tag row: [row of its raw name, row of its caption text (_HIDDEN: not shown)]
    rank_pairs: np.ndarray
    group: np.ndarray  # per tag row: caption group, -1 = not shown
    strings: pl.Series
    codes: np.ndarray  # per `strings` row: tag type (raw names) or CAPTION_CODE
    extra_rows: dict[int, dict[str, int]]  # group → text → row: separator/year/rating/quality
    rest: tuple[int, int]  # rows [start, end) of caption texts after the keep separator
    prefixed_offset: int  # caption row r → r + prefixed_offset: keep separator + the same text
    # per-job helpers derived from this table, filled as first needed (token counts per row:
    # captions/variants.py); content only, never compared
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def token_counts_key(self, tokenizer: str, separator: str) -> tuple:
        """Key on `cache` of the per-(caption row, slot) token counts of kohaku and plain ordered
        pieces — slot 0: the text + `separator`, 1: the text alone — as captions/variants.py's
        `piece_tokens` files them (the prepared tag summary stores them for `clip`)."""
        return token_cache_key(tokenizer, ("", ""), (separator, ""), self.caption_start)

    def token_forms_key(self, tokenizer: str) -> tuple:
        """Key on `cache` of `(separator, counts)`: per caption row (- caption_start), the token
        counts of the other texts standard variants make of it (captions/variants.py
        `ROW_FORMS`: its group's xml tags around it, the `@` artist prefix); -1: not counted."""
        return ("token_forms", tokenizer, self.caption_start)

    @property
    def caption_start(self) -> int:
        return len(self.tag_index.keys)

    @property
    def row_bits(self) -> int:
        return len(self.strings).bit_length()


def prepare_tags(tags: pl.DataFrame, config: CaptionConfig) -> PreparedTags:
    """`tags` (TAG_SCHEMA rows, any order) → PreparedTags for `config`. Big tag tables are
    stored prepared (captions/summaries.py): ~0.35 s of sorts at Danbooru's ~1M names."""
    columns = _tag_columns(tags.sort("tag_id"), config)
    frame = columns.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))
    n = frame.height
    raw = frame.sort("type", "_prank")
    caption = _caption_texts(frame, config)
    rank_pairs = np.full((n, 2), _HIDDEN, dtype=np.int64)
    rank_pairs[raw["_row"].to_numpy(), 0] = np.arange(n)
    caption_rows = caption["_row"].to_numpy()
    is_tag = caption_rows >= 0
    rank_pairs[caption_rows[is_tag], 1] = n + np.nonzero(is_tag)[0]
    texts = [caption["_text"]]
    if config.keep_separator is not None:
        texts.append(config.keep_separator + caption["_text"])
    strings = pl.concat([raw["name"], *texts]).rechunk()
    added = caption.with_row_index("_at").filter(pl.col("_row") < 0)
    extra_rows: dict[int, dict[str, int]] = {}
    for at, group, text in added.select("_at", "_g", "_text").iter_rows():
        extra_rows.setdefault(group, {})[text] = n + at
    return PreparedTags(
        tag_index=KeyIndex(frame["tag_id"].to_numpy()),
        rank_pairs=rank_pairs,
        group=frame["_g"].fill_null(-1).to_numpy().astype(np.int64),
        strings=strings,
        codes=np.concatenate([raw["type"].to_numpy(), np.full(len(strings) - n, CAPTION_CODE)]).astype(np.int8),
        extra_rows=extra_rows,
        # groups sort in caption order, so the texts after the separator are one block
        rest=(n + int((caption["_g"] <= G_MARK).sum()), n + caption.height),
        prefixed_offset=caption.height,
    )


def _caption_texts(frame: pl.DataFrame, config: CaptionConfig) -> pl.DataFrame:
    """(_g, _text, _row) of every caption text in caption order — the shown tags (`_row`: their
    frame row) and the texts added per post (`_row` -1) — by group, then in-group rank. Orders
    that depend on the post sort their caption rows per chunk; here they get popularity."""
    in_group = "_arank" if config.tag_order == "alpha" else "_prank"
    shown = frame.filter(pl.col("_g").is_not_null()).select("_g", _k=in_group, _text="_disp", _row="_row")
    added = [(g, k, text) for g, texts in _extra_texts(config).items() for k, text in enumerate(texts)]
    schema = {"_g": pl.Int8, "_k": pl.Int64, "_text": pl.String, "_row": pl.Int64}
    extra = pl.DataFrame([(g, k, text, -1) for g, k, text in added], schema=schema, orient="row")
    return pl.concat([shown, extra]).sort("_g", "_k").drop("_k")


def year_number_texts(config: CaptionConfig) -> list[str]:
    """`year 2005` … `year 2099`: the `year_number` tags (after the period tag, same group)."""
    return [f"{config.year_number_prefix}{y}" for y in range(config.year_min, 2100)] if config.year_number else []


def _extra_texts(config: CaptionConfig) -> dict[int, list[str]]:
    """Texts of the rows added per post, by caption group."""
    extra = {G_YEAR: list(config.year_tags) + year_number_texts(config), G_RATING: list(dict.fromkeys(config.rating_tags.values())),
             G_QUALITY: list(config.quality_bands)}
    if config.keep_separator is not None:
        extra[G_MARK] = [config.keep_separator]  # only for posts with nothing after it
    return extra


@dataclass(frozen=True)
class ChunkRows:
    """One chunk's post-tag relations resolved against the prepared tag table (parallel arrays)."""

    pi: np.ndarray  # row index of the post in the chunk
    ti: np.ndarray  # row of the tag in `PreparedTags` (its position in `tag_index`)
    rid: np.ndarray | None  # relation id, for tag_order = "db"

    def take(self, mask: np.ndarray) -> "ChunkRows":
        return ChunkRows(self.pi[mask], self.ti[mask], None if self.rid is None else self.rid[mask])


def resolve_tags(tags: PreparedTags, tag_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, row) of each tag id in the prepared table; missing or blacklisted tags are not
    found (the reference joins relations with the tag table, then drops blacklisted)."""
    return tags.tag_index.find(tag_ids)


def _argsort_rows(primary: np.ndarray, secondary: list[np.ndarray]) -> np.ndarray:
    """Row order by (primary, *secondary), all integer arrays (at least one secondary)."""
    if not len(primary):
        return np.empty(0, dtype=np.int64)
    order = np.lexsort(secondary[::-1])
    return order[np.argsort(primary[order], kind="stable")]


def _per_relation_keys(
    rows: ChunkRows, tags: PreparedTags, post_ids: np.ndarray, config: CaptionConfig
) -> list[np.ndarray]:
    """In-group sort keys of each relation for the orders that depend on the post ("db", "shuffle")."""
    if config.tag_order == "db":
        return [rows.rid]
    tag_ids = tags.tag_index.keys[rows.ti]
    return [shuffle_keys(config.shuffle_seed, post_ids[rows.pi], tag_ids), tag_ids]


# ---------------------------------------------------------------------------------------------
# Assembling
# ---------------------------------------------------------------------------------------------
def _extra_rows(
    rows: ChunkRows, frame: pl.DataFrame, tags: PreparedTags, config: CaptionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(post index, strings row, caption group) of the year, rating and quality tags of each
    post, rows that sort into the caption like tags, and of the keep separator of posts with
    nothing after it (the others get it as a prefix of their first element after it)."""
    parts = [(G_YEAR, frame["year_tag"]), (G_RATING, frame["rating_tag"]), (G_QUALITY, frame["quality"])]
    if config.year_number:  # right after the period tag: same group, later strings rows
        parts.insert(1, (G_YEAR, frame["year_number_tag"]))
    post_index = np.arange(frame.height, dtype=np.int64)
    pis, ranks, groups = [], [], []
    for group, values in parts:
        rank = values.replace_strict(tags.extra_rows.get(group, {}), default=-1, return_dtype=pl.Int64).to_numpy()
        present = rank >= 0
        pis.append(post_index[present])
        ranks.append(rank[present])
        groups.append(np.full(len(ranks[-1]), group, dtype=np.int64))
    if config.keep_separator is not None:
        alone = _nothing_after_keep(rows, np.concatenate(pis), frame.height, tags)
        pis.append(post_index[alone])
        ranks.append(np.full(len(pis[-1]), tags.extra_rows[G_MARK][config.keep_separator], dtype=np.int64))
        groups.append(np.full(len(pis[-1]), G_MARK, dtype=np.int64))
    return np.concatenate(pis), np.concatenate(ranks), np.concatenate(groups)


def _nothing_after_keep(rows: ChunkRows, extra_pi: np.ndarray, posts: int, tags: PreparedTags) -> np.ndarray:
    """Which posts have no caption element after the keep separator."""
    alone = np.bincount(extra_pi, minlength=posts) == 0
    if alone.any():  # rare: year, rating and quality tags off or missing; look at the tags
        rest = tags.group[rows.ti] > G_MARK
        alone &= np.bincount(rows.pi[rest], minlength=posts) == 0
    return alone


def _sorted_elements(
    rows: ChunkRows, tags: PreparedTags, frame: pl.DataFrame, post_ids: np.ndarray, config: CaptionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(post index, strings row) of every element of the chunk, in output order: by post, then
    its raw names (type, popularity), then its caption elements."""
    extra = _extra_rows(rows, frame, tags, config)
    if config.tag_order in ("popularity", "alpha"):
        # The strings table is already in output order: a row is its own sort key.
        return _sort_packed(tags.row_bits, [(rows.pi, tags.rank_pairs[rows.ti]), extra[:2]])
    # Orders that depend on the post: caption elements are sorted first, then keyed by their
    # position in that order (after every raw row, so raw names still come first).
    caption_pi, caption_rows = _caption_in_order(rows, extra, tags, post_ids, config)
    position = tags.caption_start + np.arange(len(caption_rows), dtype=np.int64)
    bits = (tags.caption_start + len(caption_rows)).bit_length()
    pi, key = _sort_packed(bits, [(rows.pi, tags.rank_pairs[rows.ti, 0]), (caption_pi, position)])
    is_caption = key >= tags.caption_start
    key[is_caption] = caption_rows[key[is_caption] - tags.caption_start]
    return pi, key


def _caption_in_order(
    rows: ChunkRows, extra: tuple[np.ndarray, np.ndarray, np.ndarray], tags: PreparedTags,
    post_ids: np.ndarray, config: CaptionConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(post index, strings row) of every caption element by (post, group, per-post key)."""
    extra_pi, extra_rank, extra_group = extra
    rank = tags.rank_pairs[rows.ti, 1]
    shown = rank != _HIDDEN
    captioned = rows.take(shown)
    keys = _per_relation_keys(captioned, tags, post_ids, config)
    pi = np.concatenate([captioned.pi, extra_pi])
    group = np.concatenate([tags.group[captioned.ti], extra_group])
    keys = [np.concatenate([k, np.zeros(len(extra_pi), dtype=k.dtype)]) for k in keys]
    order = _argsort_rows(pi * 16 + group, keys)
    return pi[order], np.concatenate([rank[shown], extra_rank])[order]


def _sort_packed(bits: int, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(post index, key) of the elements of `parts` — (post index, keys: one column per
    element kind) — sorted by (post, key) as one int64 value sort (keys are unique within a
    post: 3x faster than an argsort), without _HIDDEN keys."""
    sizes = [keys.size for _, keys in parts]
    if max((int(pi.max()) for pi, _ in parts if len(pi)), default=0).bit_length() + bits > 61:
        raise ValueError("chunk too large for packed sort keys: use a smaller chunk_size")
    packed = np.empty(sum(sizes), dtype=np.int64)
    at = 0
    for (pi, keys), size in zip(parts, sizes):
        shifted = (pi << bits).reshape(-1, *([1] * (keys.ndim - 1)))
        np.bitwise_or(shifted, keys, out=packed[at:at + size].reshape(keys.shape))
        at += size
    packed.sort()
    packed = packed[:np.searchsorted(packed, _HIDDEN)]
    key = packed & ((1 << bits) - 1)
    return np.right_shift(packed, bits, out=packed), key


def _prefix_rest(pi: np.ndarray, row: np.ndarray, tags: PreparedTags, config: CaptionConfig) -> None:
    """hakubooru writes `kept, |||rest`: the first element after the keep separator becomes
    its copy prefixed with the separator (in place: `row` is edited)."""
    if config.keep_separator is None:
        return
    start, end = tags.rest
    rest = (row >= start) & (row < end)
    first = rest.copy()
    first[1:] &= ~(rest[:-1] & (pi[1:] == pi[:-1]))
    row[first] += tags.prefixed_offset


def _per_post_lists(pi: np.ndarray, row: np.ndarray, tags: PreparedTags, config: CaptionConfig) -> pl.DataFrame:
    """`_pi`, the tags_* lists and the caption of every post index that has any element."""
    elements = pl.DataFrame({
        "_pi": pi, "_text": tags.strings.gather(row), "_code": tags.codes[row],
    }).with_columns(pl.col("_pi").set_sorted())  # sorted keys: group_by cuts runs, no hashing
    text = pl.col("_text")
    lists = elements.group_by("_pi", maintain_order=True).agg(
        *(text.filter(pl.col("_code") == t).alias(name) for t, name in TAG_COLUMNS.items()),
        caption=text.filter(pl.col("_code") == CAPTION_CODE),
    )
    return lists.with_columns(caption=pl.col("caption").list.join(config.separator))


# Caption groups by their name in recipes (config.CAPTION_GROUPS), as list columns `g_<name>`
# that captions/variants.py orders into the other variants.
GROUP_CODES = {"count": G_KEEP, "character": G_CHARACTER, "copyright": G_COPYRIGHT, "artist": G_ARTIST,
               "general": G_GENERAL, "meta": G_META, "year": G_YEAR, "rating": G_RATING, "quality": G_QUALITY}


def row_groups(tags: PreparedTags) -> np.ndarray:
    """Caption group of every `strings` row (-1: a raw name), the separator-prefixed copies too."""
    out = np.full(len(tags.strings), -1, dtype=np.int8)
    shown = tags.rank_pairs[:, 1] != _HIDDEN
    out[tags.rank_pairs[shown, 1]] = tags.group[shown]
    for group, texts in tags.extra_rows.items():
        out[list(texts.values())] = group
    start, height = tags.caption_start, tags.prefixed_offset
    if len(out) > start + height:
        out[start + height:] = out[start:start + height]
    return out


def group_lists(pi: np.ndarray, row: np.ndarray, tags: PreparedTags, posts: int) -> pl.DataFrame:
    """`g_<group>`: each post's caption texts per group, in caption order, without the keep
    separator (one row per post, `posts` rows)."""
    groups = row_groups(tags)[row]
    keep = (groups >= 0) & (groups != G_MARK)
    start, height = tags.caption_start, tags.prefixed_offset
    plain = np.where(row >= start + height, row - height, row)[keep]
    elements = pl.DataFrame({"_pi": pi[keep], "_text": tags.strings.gather(plain), "_grp": groups[keep]})
    text, grp = pl.col("_text"), pl.col("_grp")
    lists = elements.with_columns(pl.col("_pi").set_sorted()).group_by("_pi", maintain_order=True).agg(
        *(text.filter(grp == code).alias(f"g_{name}") for name, code in GROUP_CODES.items()))
    empty = pl.lit([], dtype=pl.List(pl.String))
    return pl.DataFrame({"_pi": np.arange(posts, dtype=np.int64)}).join(
        lists.with_columns(pl.col("_pi").cast(pl.Int64)), on="_pi", how="left", maintain_order="left",
    ).select(*(pl.col(f"g_{name}").fill_null(empty) for name in GROUP_CODES))


def post_columns(posts: pl.DataFrame, config: CaptionConfig, thresholds: Thresholds) -> pl.DataFrame:
    """rating, rating_tag, quality, year_tag of each post (no tags needed)."""
    frame = with_dates(posts, config)
    frame = add_year_tag(add_quality(frame, config, thresholds), config, thresholds)
    rating = pl.col("rating").replace_strict(dict(enumerate(RATING_NAMES)), default=None, return_dtype=pl.String)
    # after `rating` became its name
    rating_tag = pl.col("rating").replace_strict(config.rating_tags, default=None, return_dtype=pl.String)
    if not config.rating:
        rating_tag = pl.lit(None, dtype=pl.String)
    if config.year_number:
        frame = frame.with_columns(year_number_tag=pl.lit(config.year_number_prefix) + pl.col("_year").cast(pl.String))
    return frame.with_columns(rating=rating).with_columns(rating_tag=rating_tag)


def caption_elements(
    posts: pl.DataFrame, tags: PreparedTags, rows: ChunkRows, config: CaptionConfig, thresholds: Thresholds
) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """The post columns, and (post index, strings row) of every element in output order: raw
    names, then caption elements (the first after the keep separator already prefixed)."""
    frame = post_columns(posts, config, thresholds)
    pi, row = _sorted_elements(rows, tags, frame, posts["id"].to_numpy(), config)
    _prefix_rest(pi, row, tags, config)
    return frame, pi, row


def assemble_captions(
    frame: pl.DataFrame, pi: np.ndarray, row: np.ndarray, tags: PreparedTags, config: CaptionConfig
) -> pl.DataFrame:
    """`caption_elements` → caption frame (OUTPUT_COLUMNS), one row per post in the same order."""
    lists = _per_post_lists(pi, row, tags, config)
    if lists.height == frame.height:  # every post has an element: the rows line up
        frame = frame.hstack(lists.drop("_pi"))
    else:
        empty = pl.lit([], dtype=pl.List(pl.String))
        frame = frame.with_row_index("_pi").join(lists, on="_pi", how="left", maintain_order="left").with_columns(
            caption=pl.col("caption").fill_null(""), **{c: pl.col(c).fill_null(empty) for c in TAG_COLUMNS.values()}
        )
    return frame.select(OUTPUT_COLUMNS)


def build_captions(
    posts: pl.DataFrame, tags: PreparedTags, rows: ChunkRows, config: CaptionConfig, thresholds: Thresholds
) -> pl.DataFrame:
    """posts (POST_SCHEMA, ordered by id) + prepared tags + the chunk's relations → caption
    frame, one row per post in the same order."""
    frame, pi, row = caption_elements(posts, tags, rows, config, thresholds)
    return assemble_captions(frame, pi, row, tags, config)
