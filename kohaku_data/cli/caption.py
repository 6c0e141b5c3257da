"""`kdata caption` and `kdata caption stats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import DbOption, RecipeOption, clean_errors, is_tty, settings
from kohaku_data.errors import KdataError

app = typer.Typer(help="Captions from the DB: quality/year/rating tags in Kohaku-XL layout.")


class CaptionCliError(KdataError):
    """Bad options for `kdata caption`."""


def _open(db: Path | None, recipe: Path | None):
    from kohaku_data.config import load_recipe
    from kohaku_data.db import DanbooruDB

    s = settings(db=db, recipe=recipe)
    return DanbooruDB.open(s.require_db(), readonly=True), load_recipe(s.recipe)


def _select_ids(handle, query: str | None):
    """Post ids of the query (None = every post)."""
    if not query:
        return None
    from kohaku_data.db.query import query_ids

    return list(query_ids(handle, query))


@app.callback(invoke_without_command=True)
def caption(
    ctx: typer.Context,
    db: DbOption = None,
    recipe: RecipeOption = None,
    query: Annotated[str | None, typer.Option("--query", help="Danbooru search (default: the recipe's query; "
                                              "empty = every post).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="FILE.parquet, FILE.jsonl, or a folder for <id>.txt "
                                             "files.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Re-caption this built dataset instead (a folder or a URL).")] = None,
    chunk_size: Annotated[int | None, typer.Option("--chunk-size", min=1, help="Posts per chunk (memory; default: "
                                                   "kohaku_data.config.CAPTION_CHUNK_SIZE).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Caption processes. One process already keeps "
                                         "2 cores busy (a fetch thread, two captioning threads); more pay off on many-core machines.")] = 1,
) -> None:
    """Write id → caption (+ the separate tags) for the selected posts."""
    if ctx.invoked_subcommand is not None:
        return
    from kohaku_data.runtime import bulk_process

    bulk_process()
    with clean_errors(kept="No partial output is left: an output file appears only once complete"):
        from kohaku_data.config import CAPTION_CHUNK_SIZE

        handle, rec = _open(db, recipe)
        with handle:
            if dataset is not None:
                from kohaku_data.assembly.recaption import recaption_dataset

                typer.echo(json.dumps(recaption_dataset(dataset, rec, handle), indent=2, default=str))
                return
            if out is None:
                raise CaptionCliError("pass --out FILE.parquet|FILE.jsonl|FOLDER (or --dataset DIR to re-caption)")
            ids = _select_ids(handle, query if query is not None else rec.query)
            _write(handle, rec.caption, ids, out, chunk_size or CAPTION_CHUNK_SIZE, workers)


def _write(handle, config, ids, out: Path, chunk_size: int, workers: int) -> None:
    from kohaku_data.db.pages import PageFetcher

    # One process: its pages are fetched (sqlite only) while polars and numpy are imported below,
    # ~0.2 s that a short job otherwise spends on one core.
    pages = PageFetcher(handle.path, ids, chunk_size, config.needs_relation_ids) if workers == 1 else None
    try:
        from kohaku_data.captions import iter_captions, total_posts
        from kohaku_data.captions.output import output_kind, write_captions
        from kohaku_data.curation.captions import curated_thresholds
        from kohaku_data.progress import progress_bar

        output_kind(out)  # refuse a bad path before the slow part
        thresholds = curated_thresholds(handle, config)
        total = total_posts(handle) if ids is None else len(set(ids))
        with progress_bar("captions", total=total, enabled=is_tty()) as bar:
            frames = iter_captions(handle, config, thresholds, ids=ids, chunk_size=chunk_size, workers=workers,
                                   pages=pages)
            written = write_captions(frames, out, on_chunk=bar.advance)
    finally:
        if pages is not None:
            pages.close()  # already closed by iter_captions unless something failed before it ran
    typer.echo(f"{written} captions → {out}")


@app.command("stats")
def stats(
    db: DbOption = None,
    recipe: RecipeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tokens: Annotated[bool, typer.Option("--tokens", help="Also caption the recipe's posts and give the CLIP "
                                         "token lengths per caption variant (share past 75/150/225).")] = False,
) -> None:
    """Quality thresholds per group, and the share of posts per quality band, year tag and rating."""
    from kohaku_data.captions import caption_stats
    from kohaku_data.curation.captions import curated_thresholds

    with clean_errors():
        handle, rec = _open(db, recipe)
        with handle:
            thresholds = curated_thresholds(handle, rec.caption)
            result = caption_stats(handle, rec.caption, thresholds)
            if tokens:
                from kohaku_data.captions import iter_captions
                from kohaku_data.captions.variants import token_stats

                frames = list(iter_captions(handle, rec.caption, thresholds, ids=_select_ids(handle, rec.query),
                                             variants=True))
                result["tokens"] = token_stats(frames, rec.caption)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_stats(result)


def _print_stats(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    th = result["thresholds"]
    table = Table(title=f"{th['metric']} thresholds ({th['interpolation']} quantiles, posts {result['posts']})")
    table.add_column("group")
    table.add_column("posts", justify="right")
    for p in th["percentiles"]:
        table.add_column(f"p{p:g}", justify="right")
    for group, values in {**th["by_rating"], **th["by_cohort"]}.items():
        table.add_row(group, str(th["counts"].get(group, "")), *[f"{v:g}" for v in values])
    console.print(table)
    if "tokens" in result:
        table = Table(title="CLIP tokens per caption variant (sd-scripts windows 75 / 150 / 225)")
        for col in ("variant", "posts", "mean", "p50", "p90", "p99", "max", ">75", ">150", ">225"):
            table.add_column(col, justify="right")
        for name, v in result["tokens"].items():
            table.add_row(name, str(v["posts"]), f"{v['mean']:.1f}", f"{v['p50']:g}", f"{v['p90']:g}", f"{v['p99']:g}",
                          str(v["max"]), *(f"{100 * v[f'past_{w}']:.1f}%" for w in (75, 150, 225)))
        console.print(table)
    for key in ("quality", "year", "rating"):
        shares = Table(title=f"{key} tags")
        shares.add_column(key)
        shares.add_column("posts", justify="right")
        shares.add_column("share", justify="right")
        for name, v in result[key].items():
            shares.add_row(name, str(v["posts"]), f"{100 * v['share']:.1f}%")
        console.print(shares)
