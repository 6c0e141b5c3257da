"""`kdata recipe check R`: validate a recipe whole and show what a build of it would do."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import DbOption, clean_errors

app = typer.Typer(help="Recipes: check one before building.", no_args_is_help=True)


@app.command("check")
def check(
    recipe: Annotated[Path, typer.Argument(help="Recipe file pipelines/NAME.toml, or a shipped recipe by name (demo).")],
    db: DbOption = None,
    src: Annotated[str | None, typer.Option(
        "--src", help="Image source as for kdata build: adds the files that become samples and the rejects "
                      "known before any image is opened.")] = None,
    src_index: Annotated[str | None, typer.Option(
        "--src-index", help="Where the .json indexes of the tars under --src live (as for kdata build).")] = None,
) -> None:
    """Every problem of the recipe (exit 2), else what a build would do: posts, buckets, expected rejects, shards."""
    with clean_errors():
        from kohaku_data.config import load_recipe, load_settings

        the_recipe = load_recipe(recipe)
        from kohaku_data.sources import source_root

        shown_src = src
        src = source_root(src, src_index) if src is not None else None
        show_preview(the_recipe, str(recipe), load_settings(db=db).db, src)
        typer.echo(f"next: kdata build --recipe {recipe} --src {shown_src or 'SRC'}"
                   + (f" --src-index {src_index}" if src_index and shown_src else "")
                   + (f" --db {db}" if db else "") + f" --out OUT   (or --dry-run first)")


def show_preview(recipe, shown: str, db_path: Path | None, src: str | None) -> None:
    """Print the preview of a valid recipe (`assembly.preview`); the DB and the source are optional."""
    from kohaku_data.assembly.hints import reject_fix
    from kohaku_data.assembly.preview import preview
    from kohaku_data.db import DanbooruDB

    image = recipe.image
    bucket = image.bucket if isinstance(image.bucket, str) else image.bucket.name
    codec = image.codec if isinstance(image.codec, str) else image.codec.name
    typer.echo(f"recipe {shown}: OK ({recipe.dataset_name}; query {recipe.query.strip() or '(every post with a file)'})")
    source = None
    if src is not None:
        from kohaku_data.sources import open_source

        source = open_source(src)
    if db_path is None:
        view = preview(recipe, None)
        typer.echo(f"buckets: {bucket}, {view.bucket_count} buckets; codec {codec}")
        typer.echo("posts: give --db (and --src) to see the posts selected and the rejects expected")
        return
    with DanbooruDB.open(db_path, readonly=True) as handle:
        view = preview(recipe, handle, source)
    typer.echo(f"posts selected: {view.posts}")
    typer.echo(f"buckets: {bucket}, {view.bucket_count} buckets; codec {codec}")
    if view.samples is None:
        typer.echo("files: give --src to see which posts have a file and the rejects expected")
        return
    expected = dict(view.rejects)
    if view.too_small:
        expected["too_small"] = view.too_small
    typer.echo(f"files to process: {view.samples}")
    typer.echo(f"expected rejects: {sum(expected.values())}" + (" (too_small predicted from the DB's image sizes)"
                                                                 if view.too_small else ""))
    for reason, count in sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {reason}: {count} — {reject_fix(reason)}")
    top = ", ".join(f"{b} {n}" for b, n in view.buckets.most_common(6))
    if top:
        typer.echo(f"samples by bucket (from the DB's sizes): {top}")
    if view.unknown_size:
        typer.echo(f"  ({view.unknown_size} posts have no size in the DB: not predicted)")
    typer.echo(f"shards: about {view.shards} ({(view.bytes or 0) / 1e6:.0f} MB at a rough "
               f"{codec} size; shard_max_bytes {recipe.shard_max_bytes})")
    if view.samples == 0 or view.samples == expected.get("too_small"):
        typer.echo("warning: this build would make no samples")
