"""`kdata export DATASET OUT --format kohya|kohya-ft|hf`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import DbOption, clean_errors, is_tty, settings


def export(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder made by `kdata build`.")],
    out: Annotated[Path, typer.Argument(help="Folder to export into (created; resumable).")],
    fmt: Annotated[str, typer.Option("--format", help="kohya (DreamBooth layout + dataset.toml), "
                                     "kohya-ft (fine-tuning metadata) or hf (parquet + card).")] = "kohya",
    query: Annotated[str | None, typer.Option("--query", help="Only posts matching this Danbooru search (needs --db).")] = None,
    db: DbOption = None,
    fraction: Annotated[float | None, typer.Option("--fraction", help="Only a deterministic share of the samples, in (0, 1].")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --fraction split.")] = 0,
    link_from: Annotated[Path | None, typer.Option("--link-from", help="An earlier export whose identical images are hard-linked.")] = None,
    level: Annotated[str | None, typer.Option("--level", help="Export the images of one of the recipe's "
                                              "[image] levels (e.g. square-512) instead of the main ones.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace another export in OUT.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Export a built dataset for a trainer: images byte-identical to the shards, no re-encoding."""
    with clean_errors(kept="The files already exported are kept; rerun to resume", target=str(out)):
        from kohaku_data.export import export_dataset

        keys = None
        if query is not None:
            from kohaku_data.db import DanbooruDB
            from kohaku_data.db.query import query_ids

            with DanbooruDB.open(settings(db=db).require_db(), readonly=True) as handle:
                keys = query_ids(handle, query)
        result = export_dataset(dataset, out, fmt, keys=keys, query=query, fraction=fraction, seed=seed,
                                link_from=link_from, force=force, progress=is_tty() and not no_progress,
                               level=level)
        typer.echo(f"{result.out}: {result.samples} samples as {result.format} "
                   f"({result.written} files written, {result.linked} linked, {result.skipped} already there; "
                   f"{result.bytes / 1e6:.1f} MB of images)")
        for role, path in result.files.items():
            typer.echo(f"  {role}: {path}")
