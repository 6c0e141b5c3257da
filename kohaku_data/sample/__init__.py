"""`kdata sample`: deterministic, realistic sample databases and raw images.

    write_sample_db(path, posts, seed)                 # the metadata sqlite only
    write_sample_images(out_dir, db_path, seed, ...)   # raw/ files + DB updated to match
    write_sample(out_dir, posts, seed, ...)            # both, as `kdata sample OUT` does
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kohaku_data.sample.images import HARD_CASES, ORPHAN_CASES, HardCase, read_hard_cases, write_sample_images
from kohaku_data.sample.metadata import SampleError, load_tag_table, write_sample_db

DEFAULT_MAX_IMAGES = 2000


@dataclass(frozen=True)
class SampleSummary:
    db_path: Path
    posts: int
    files: list[Path]
    seconds_db: float
    seconds_images: float


def write_sample(out_dir: Path, posts: int, seed: int = 0, *, images: int | None = None,
                 layout: Literal["folder", "tar"] = "folder", force: bool = False,
                 progress: bool = False, migrate: bool = False, tail_tags: int | None = None) -> SampleSummary:
    """OUT/danbooru.db with `posts` posts and images for the first `images` of them
    (None: min(posts, 2000); 0: none). Refuses a non-empty OUT/danbooru.db unless `force`.
    `migrate`: also apply migrations/ and fill the alias table (else: the published schema).
    `tail_tags`: synthetic long-tail tags (None: the size rule of `sample.tail.default_tail_tags`)."""
    out_dir = Path(out_dir)
    db_path = out_dir / "danbooru.db"
    if db_path.exists() and db_path.stat().st_size > 0:
        if not force:
            raise SampleError(f"{db_path} already exists: choose another OUT or pass --force to replace it")
        db_path.unlink()
    t0 = time.perf_counter()
    try:
        write_sample_db(db_path, posts, seed, progress=progress, tail_tags=tail_tags)
        t1 = time.perf_counter()
        count = min(posts, DEFAULT_MAX_IMAGES) if images is None else images
        files = write_sample_images(out_dir, db_path, seed, layout=layout, max_images=count) if count > 0 else []
        if migrate:
            _migrate_with_aliases(db_path)
    except BaseException:
        # A half-written sample (a full disk, Ctrl-C) must not block the rerun as "already exists".
        for leftover in (db_path, db_path.with_name(db_path.name + "-journal")):
            leftover.unlink(missing_ok=True)
        raise
    return SampleSummary(db_path, posts, files, t1 - t0, time.perf_counter() - t1)


def _migrate_with_aliases(db_path: Path) -> None:
    # After the bulk load and the images: index builds once, on the final rows.
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.migrate import migrate
    from kohaku_data.sample.metadata import write_aliases

    from kohaku_data.db import summary
    from kohaku_data.keepers import SUMMARY_KEEPERS

    with DanbooruDB.open(db_path) as db:
        migrate(db, refresh_summaries=False)
        with db.database.atomic():
            write_aliases(db.connection())
        summary.refresh(db, SUMMARY_KEEPERS)  # after the aliases: the counts include them


__all__ = [
    "DEFAULT_MAX_IMAGES", "HARD_CASES", "ORPHAN_CASES", "HardCase", "SampleError", "SampleSummary",
    "load_tag_table", "read_hard_cases", "write_sample", "write_sample_db", "write_sample_images",
]
