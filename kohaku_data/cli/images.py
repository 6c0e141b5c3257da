"""`kdata images SRC OUT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import RecipeOption, WorkersOption, clean_errors, default_workers, is_tty, settings


def images(
    src: Annotated[Path, typer.Argument(help="Folder of images (recursive) or danbooru2023 tar / folder of tars.")],
    out: Annotated[Path, typer.Argument(help="Output folder: <name>.webp|png and records.parquet.")],
    preset: Annotated[str | None, typer.Option("--preset", help="Bucket preset (default: the recipe's, kohaku-xl).")] = None,
    codec: Annotated[str | None, typer.Option("--codec", help="webp-fast, webp-small or png (default: the recipe's).")] = None,
    workers: WorkersOption = None,
    recipe: RecipeOption = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Lossless image stage: bucket, resize once (LANCZOS), store lossless WebP/PNG, verify every write."""
    with clean_errors(kept="The images already written to the output folder are kept"):
        from kohaku_data.config import load_recipe
        from kohaku_data.images.batch import run_images

        config = load_recipe(settings(recipe=recipe).recipe).image
        update = {k: v for k, v in (("bucket", preset), ("codec", codec)) if v is not None}
        config = config.model_copy(update=update)
        summary = run_images(src, out, config, workers=workers or default_workers(),
                             progress=is_tty() and not no_progress)
        typer.echo(f"{summary.total} inputs: {summary.ok} ok, {summary.total - summary.ok} rejected")
        for reason, count in sorted(summary.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            typer.echo(f"  {reason}: {count}")
        typer.echo(f"records: {summary.records}")
