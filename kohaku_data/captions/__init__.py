"""Captions from the DB: tags in Kohaku-XL layout plus quality, year and rating tags.

Format (hakubooru's KohakuCaptioner, defaults of `CaptionConfig`)::

    <count tags>, <characters>, <copyrights>, <artists>, |||<general>, <meta>, <year>, <rating>, <quality>

e.g. ``1girl, hatsune miku, vocaloid, kei (keigarou), |||long hair, twintails, highres, newest, safe, masterpiece``

- Kept part (before `keep_separator`, for sd-scripts' `keep_tokens_separator`): the count tags
  found in the post's general tags (`config.keep_tags`: 1girl…6+girls, multiple_girls, the same
  for boys and others, male_focus), then characters, copyrights, artists (minus names containing
  `drop_artist_containing`, e.g. `banned`). It ends with the separator then `|||`, and `|||` is
  followed directly by the first tag of the rest (exactly as hakubooru writes it). With no kept
  tags the caption starts with `|||`. `keep_separator = None`: one plain list.
- The rest: other general tags, meta tags minus the non-visual ones (`drop_meta_containing`),
  then the year tag, rating tag (`explicit, nsfw` for explicit) and quality tag, each if any.
- Names longer than 3 characters get `_` → space (`^_^` stays); optional `(` → `\\(`.
  Blacklisted tags (DB names; a space in an entry means `_`) are dropped everywhere, including
  the `tags_*` columns. Tags with a blank name are left out of the caption.
- Order inside each group: `popularity` (tag.popularity descending, ties by name), `db`
  (posttagrelation id), `alpha` (DB name) or `shuffle` (a splitmix64 key of (shuffle_seed,
  post id, tag id): deterministic per post, different across posts and seeds).
- `tags_general` … `tags_meta`: the post's raw DB names of each type, popularity order.

Quality and year rules, quantile and tie definitions: see `thresholds.py`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl

from kohaku_data.captions.frame import TagSource, count_posts, parse_page
from kohaku_data.captions.layout import OUTPUT_COLUMNS, prepare_tags
from kohaku_data.captions.parallel import caption_page, pooled_captions
from kohaku_data.captions.stats import stats_from_frame
from kohaku_data.captions.summaries import compute_thresholds, stored_prepared_tags
from kohaku_data.captions.thresholds import Thresholds
from kohaku_data.config import CAPTION_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB
from kohaku_data.db.pages import PageFetcher, RawPage, open_reader, page_specs

__all__ = [
    "DEFAULT_CHUNK_SIZE", "OUTPUT_COLUMNS", "Thresholds", "caption_posts", "caption_stats", "compute_thresholds",
    "fetch_pages", "iter_captions", "stats_from_frame",
]
# Reading the whole tag table pays off once the job is big; a few posts look their tags up.
_WHOLE_TAG_TABLE_FROM = 50_000
CAPTIONERS = 2


def caption_posts(
    db: DanbooruDB, ids: Sequence[int], config: CaptionConfig, thresholds: Thresholds, variants: bool | None = None,
) -> pl.DataFrame:
    """Caption frame of the posts in `ids` that exist (one row each, ordered by id).
    `variants`: the variant and token columns (captions/variants.py); None: if the recipe adds
    variants (builds pass True: every sample stores its token counts)."""
    frames = list(iter_captions(db, config, thresholds, ids=ids, variants=variants))
    if not frames:
        return _empty_frame(config, thresholds, _variants(config, variants))
    return pl.concat(frames) if len(frames) > 1 else frames[0]


def iter_captions(
    db: DanbooruDB, config: CaptionConfig, thresholds: Thresholds, ids: Sequence[int] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE, workers: int = 1, pages: PageFetcher | None = None,
    variants: bool | None = None,
) -> Iterator[pl.DataFrame]:
    """Caption frames of `chunk_size` posts at a time, by id; every post when `ids` is None.

    Reads go through read-only connections of their own: they see what is committed to the
    file, and the frames may be pulled from any thread. `workers > 1` captions chunks in that
    many processes; the frames still come in id order, and at most `workers + 1` chunks are
    in flight, so memory grows with `chunk_size`, not the DB. `pages`: this job's pages already
    being fetched (`fetch_pages` with the same arguments, started early by a caller that still
    has imports to do); it is closed here. One process only. `variants`: as `caption_posts`."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if pages is not None and workers > 1:
        pages.close()
        raise ValueError("prefetched pages are for one process (workers = 1)")
    # A connection of its own (not the handle's, which belongs to the thread that opened it):
    # the frames may be pulled from another thread, e.g. by the parquet writer.
    conn = open_reader(db.path)
    try:
        yield from _captions_of(db, conn, config, thresholds, ids, chunk_size, workers, pages,
                                _variants(config, variants))
    finally:
        conn.close()


def fetch_pages(db: DanbooruDB, config: CaptionConfig, ids: Sequence[int] | None = None,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> PageFetcher:
    """Start fetching the pages `iter_captions` will caption (a thread; sqlite only)."""
    return PageFetcher(db.path, ids, chunk_size, with_rids=config.needs_relation_ids)


def _captions_of(
    db: DanbooruDB, conn: sqlite3.Connection, config: CaptionConfig, thresholds: Thresholds,
    ids: Sequence[int] | None, chunk_size: int, workers: int, pages: PageFetcher | None, variants: bool,
) -> Iterator[pl.DataFrame]:
    if ids is None:
        whole, many = True, True
    else:  # duplicate ids count too: these pick how pages are captioned, never what comes out
        whole, many = len(ids) > _WHOLE_TAG_TABLE_FROM, len(ids) > chunk_size
    if workers > 1 and many:
        specs = page_specs(conn, ids, chunk_size)
        yield from pooled_captions(db.path, specs, config, thresholds, whole, workers, variants)
        return
    with pages or fetch_pages(db, config, ids, chunk_size) as fetched:
        if not many:
            tags = _tag_source(conn, whole, config)
            for raw in fetched:
                if raw.count:
                    yield caption_page(*parse_page(raw), tags, config, thresholds, variants)
            return
        yield from _captioned_in_threads(conn, fetched, whole, config, thresholds, variants)


def _captioned_in_threads(
    conn: sqlite3.Connection, pages: Iterable[RawPage], whole: bool, config: CaptionConfig, thresholds: Thresholds,
    variants: bool,
) -> Iterator[pl.DataFrame]:
    """Caption frames of `pages` in order, CAPTIONERS pages at a time (polars and numpy release
    the GIL; each thread parses its page, then captions it). The tag table (~0.1 s with
    Danbooru's ~1M names) is prepared while the first pages are fetched."""
    with ThreadPoolExecutor(1 + CAPTIONERS) as pool:
        preparing = pool.submit(_tag_source, conn, whole, config)

        def caption(raw: RawPage) -> pl.DataFrame:
            posts, rel = parse_page(raw)
            return caption_page(posts, rel, preparing.result(), config, thresholds, variants)

        pending: deque[Future[pl.DataFrame]] = deque()
        for raw in pages:
            if raw.count:
                pending.append(pool.submit(caption, raw))
            if len(pending) > CAPTIONERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _tag_source(conn: sqlite3.Connection, whole: bool, config: CaptionConfig) -> TagSource:
    return TagSource(conn, whole, lambda t: prepare_tags(t, config), lambda: stored_prepared_tags(conn, config))


def _variants(config: CaptionConfig, asked: bool | None) -> bool:
    from kohaku_data.captions.variants import wants_variants

    return wants_variants(config) if asked is None else asked


def _empty_frame(config: CaptionConfig, thresholds: Thresholds, variants: bool) -> pl.DataFrame:
    from kohaku_data.captions.frame import POST_SCHEMA, TAG_SCHEMA
    from kohaku_data.captions.layout import ChunkRows, assemble_captions, caption_elements
    from kohaku_data.captions.variants import Elements, add_variants, counter_for

    tags = prepare_tags(pl.DataFrame(schema=TAG_SCHEMA), config)
    none = np.empty(0, dtype=np.int64)
    posts, pi, row = caption_elements(pl.DataFrame(schema=POST_SCHEMA), tags, ChunkRows(none, none, none), config,
                                      thresholds)
    frame = assemble_captions(posts, pi, row, tags, config)
    if not variants:
        return frame
    return add_variants(frame, Elements(pi, row, tags, 0), config, counter_for({}, config.variants.tokenizer))


def caption_stats(db: DanbooruDB, config: CaptionConfig, thresholds: Thresholds) -> dict[str, Any]:
    """Thresholds per group, and the share of the DB's posts per quality band, year tag and rating
    (the stored summary while the DB is unchanged: captions/summaries.py)."""
    from kohaku_data.captions.summaries import cached_caption_stats

    return cached_caption_stats(db, config, thresholds)


def total_posts(db: DanbooruDB) -> int:
    """Number of posts in the DB (for progress bars): the stored count while current."""
    from kohaku_data.db import summary
    from kohaku_data.db.info import INFO_SUMMARY

    stored = summary.read(db, INFO_SUMMARY)
    return int(stored["posts"]) if stored else count_posts(db.connection())
