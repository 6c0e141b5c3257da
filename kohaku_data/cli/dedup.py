"""`kdata dedup`: find duplicate images among the posts a recipe would build (nothing is removed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import DbOption, RecipeOption, WorkersOption, clean_errors, default_workers, is_tty, settings


def dedup(
    src: Annotated[str, typer.Option("--src", help="Folder of <id>.<ext> files or danbooru2023 tars (as for build).")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file of the groups: key, group (kept key), kept, link, distance.")],
    src_index: Annotated[str | None, typer.Option("--src-index", help="Where the tars' .json indexes live (as for build).")] = None,
    db: DbOption = None,
    recipe: RecipeOption = None,
    policy: Annotated[str | None, typer.Option("--policy", help="exact or near (default: the recipe's, else near).")] = None,
    threshold: Annotated[int | None, typer.Option("--threshold", min=0, max=32, help="near: Hamming bits (default: the recipe's).")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Hash cache folder (default: beside --out).")] = None,
    workers: WorkersOption = None,
) -> None:
    """Hash the recipe's posts (cached), group duplicates and write the groups; prints a summary."""
    kept = "Hashes computed so far are kept in the cache"
    with clean_errors(kept=kept):
        from kohaku_data.assembly.executor import LocalExecutor
        from kohaku_data.atomic import replacing
        from kohaku_data.assembly.plan import make_plan
        from kohaku_data.config import load_recipe
        from kohaku_data.curation.dedup import find_duplicates
        from kohaku_data.db import DanbooruDB
        from kohaku_data.sources import open_source

        conf = settings(db=db, recipe=recipe)
        the_recipe = load_recipe(conf.recipe)
        update = {k: v for k, v in (("policy", policy), ("threshold", threshold)) if v is not None}
        if the_recipe.dedup.policy == "off" and policy is None:
            update["policy"] = "near"
        config = the_recipe.dedup.model_validate({**the_recipe.dedup.model_dump(), **update})
        if config.policy == "off":
            raise typer.BadParameter("--policy must be exact or near")
        with DanbooruDB.open(conf.require_db(), readonly=True) as handle:
            plan = make_plan(handle, open_source(src, src_index), the_recipe)
            result = find_duplicates(handle, plan, config, LocalExecutor(workers or default_workers()),
                                     cache or out.parent / ".dedup", max_pixels=the_recipe.image.max_pixels,
                                     progress=is_tty())
        out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out) as tmp:
            result.groups.write_parquet(tmp, compression="zstd", statistics=True)
        summary = {"policy": config.policy, "threshold": config.threshold, **result.summary(), "out": str(out)}
        typer.echo(json.dumps(summary, sort_keys=True))
