"""One chunk of posts → captions, in this process (pages fetched ahead by db/pages.PageFetcher)
or in a pool of worker processes.

Workers are spawned (not forked: polars' thread pool must not be copied mid-use); each opens the
DB read-only and reads the tag table once, in its initializer. The parent only walks the post
ids to cut pages (`PageSpec`), keeps `workers + 1` pages in flight and yields their frames in
page order, so the output is the same as with one process and memory grows with the chunk size.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import polars as pl

from kohaku_data.captions.frame import Relations, TagSource, parse_page
from kohaku_data.captions.layout import ChunkRows, assemble_captions, caption_elements, prepare_tags, resolve_tags
from kohaku_data.captions.thresholds import Thresholds
from kohaku_data.captions.variants import Elements, add_variants, counter_for
from kohaku_data.config import CaptionConfig
from kohaku_data.db.pages import PageSpec, open_reader
from kohaku_data.runtime import exit_with, keep_freed_memory


def caption_page(
    posts: pl.DataFrame, rel: Relations, tags: TagSource, config: CaptionConfig, thresholds: Thresholds,
    variants: bool = False,
) -> pl.DataFrame:
    """Caption frame of one page (posts ordered by id, with their relations); `variants`: with
    every caption variant and its token count (captions/variants.py)."""
    curation = thresholds.curation  # tag cleanup and attached data (kohaku_data/curation/captions.py)
    if curation is not None:
        rel = curation.relations(rel)
    pi, rel = rel.of_posts(posts["id"].to_numpy())
    table = tags.lookup(rel.tag_id)
    found, ti = resolve_tags(table, rel.tag_id)
    rows = ChunkRows(pi, ti, rel.rid)
    frame, pi, row = caption_elements(posts, table, rows if found.all() else rows.take(found), config, thresholds)
    out = assemble_captions(frame, pi, row, table, config)
    out = out if curation is None else curation.finish(out, config)
    if not variants:
        return out
    # the counter lives as long as the job
    counter = counter_for(tags.job_cache, config.variants.tokenizer)
    return add_variants(out, Elements(pi, row, table, frame.height), config, counter)


class _Worker:
    """What one worker process keeps between pages: its connection and the prepared tags."""

    def __init__(self, db_path: str, config: CaptionConfig, thresholds: Thresholds, whole_table: bool,
                 variants: bool) -> None:
        from kohaku_data.captions.summaries import stored_prepared_tags

        self.conn = open_reader(db_path)
        self.config, self.thresholds, self.variants = config, thresholds, variants
        self.tags = TagSource(self.conn, whole_table, lambda t: prepare_tags(t, config),
                              lambda: stored_prepared_tags(self.conn, config))

    def caption(self, spec: PageSpec) -> pl.DataFrame:
        posts, rel = parse_page(spec.fetch(self.conn, self.config.needs_relation_ids))
        return caption_page(posts, rel, self.tags, self.config, self.thresholds, self.variants)


# Per worker process only (set by the pool initializer, never in the parent): a pool's tasks
# can reach their process's state only through a module global.
_worker: _Worker | None = None


def _init_worker(driver: int, db_path: str, config: CaptionConfig, thresholds: Thresholds, whole_table: bool,
                 variants: bool) -> None:
    global _worker
    exit_with(driver)
    keep_freed_memory()  # as in the driver (the allocator settings are per process)
    _worker = _Worker(db_path, config, thresholds, whole_table, variants)


def _caption_spec(spec: PageSpec) -> pl.DataFrame:
    assert _worker is not None, "called outside a caption worker process"
    return _worker.caption(spec)


def pooled_captions(
    db_path: str | Path, specs: Iterable[PageSpec], config: CaptionConfig, thresholds: Thresholds,
    whole_table: bool, workers: int, variants: bool = False,
) -> Iterator[pl.DataFrame]:
    """Caption frames of `specs`, in order, computed by `workers` processes (empty pages skipped)."""
    context = multiprocessing.get_context("spawn")
    init = (os.getpid(), str(db_path), config, thresholds, whole_table, variants)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        pending: deque[Future[pl.DataFrame]] = deque()
        for spec in specs:
            pending.append(pool.submit(_caption_spec, spec))
            if len(pending) > workers:
                frame = pending.popleft().result()
                if frame.height:
                    yield frame
        while pending:
            frame = pending.popleft().result()
            if frame.height:
                yield frame
