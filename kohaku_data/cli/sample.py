"""`kdata sample OUT`: a deterministic sample DB (OUT/danbooru.db) and raw images (OUT/raw/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import clean_errors, is_tty


def sample(
    out: Annotated[Path, typer.Argument(help="Output folder (gets danbooru.db, raw/, hard_cases.json).")],
    posts: Annotated[int, typer.Option("--posts", min=1, help="Number of posts in the DB.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    tar: Annotated[bool, typer.Option("--tar", help="Danbooru2023 tar layout raw/data-0XXX.tar.")] = False,
    images: Annotated[int | None, typer.Option("--images", min=0, help="Images for the first N posts (default min(posts, 2000)).")] = None,
    no_images: Annotated[bool, typer.Option("--no-images", help="Write the DB only.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing OUT/danbooru.db.")] = False,
    migrate: Annotated[bool, typer.Option("--migrate", help="Also apply migrations/ and fill the tag alias table.")] = False,
    tail_tags: Annotated[int | None, typer.Option("--tail-tags", min=0, help="Synthetic long-tail tags on a few posts each (default: posts/8 from 100k posts, ~1M tag names at full size; 0: real tags only).")] = None,
) -> None:
    """Write a deterministic, realistic sample DB and raw images with the hard cases."""
    with clean_errors(kept="No partial sample is left behind"):
        from kohaku_data.sample import write_sample

        summary = write_sample(out, posts, seed, images=0 if no_images else images,
                               layout="tar" if tar else "folder", force=force, progress=is_tty(),
                               migrate=migrate, tail_tags=tail_tags)
        typer.echo(f"wrote {summary.db_path} ({summary.posts:,} posts) in {summary.seconds_db:.1f}s")
        if summary.files:
            kind = "tar files" if tar else "image files"
            typer.echo(f"wrote {len(summary.files):,} {kind} under {out / 'raw'} and "
                       f"{out / 'hard_cases.json'} in {summary.seconds_images:.1f}s")
