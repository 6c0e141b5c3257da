"""`kdata build` and `kdata verify`."""

from __future__ import annotations

from typing import Annotated

import typer

from kohaku_data.cli.common import (
    DbOption, RecipeOption, WorkersOption, clean_errors, default_workers, is_tty,
)


def build(
    src: Annotated[str, typer.Option("--src", help="Folder of <id>.<ext> files (nested allowed) or danbooru2023 tars; a path or a URL (s3://bucket/danbooru2023/).")],
    out: Annotated[str | None, typer.Option("--out", help="Dataset folder or URL, e.g. s3://bucket/datasets/x/ (default: <datasets>/<name>-<version>).")] = None,
    db: DbOption = None,
    recipe: RecipeOption = None,
    workers: WorkersOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a build of another recipe in --out.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="Where tasks run: local (process pool, default) or ray (a Ray cluster; the ray extra); "
                           "else $KDATA_EXECUTOR, else executor in ./kdata.toml.")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Ray cluster: auto ($RAY_ADDRESS or this machine's cluster, default) or HOST:PORT; "
                              "else $KDATA_RAY_ADDRESS, else ray_address in ./kdata.toml.")] = None,
) -> None:
    """Build webdataset shards, manifest.parquet, index.json and dataset.lock from a recipe (resumable)."""
    kept = "The shards already committed and the staged images beside the output (its .staging/) are kept"
    with clean_errors(kept=kept):
        from kohaku_data.assembly import build_dataset
        from kohaku_data.assembly.executors import make_executor
        from kohaku_data.config import load_recipe, load_settings
        from kohaku_data.db import DanbooruDB

        conf = load_settings(db=db, recipe=recipe, executor=executor, ray_address=ray_address)
        the_recipe = load_recipe(conf.recipe)
        target = out or conf.datasets / the_recipe.dataset_name
        with DanbooruDB.open(conf.require_db(), readonly=True) as handle:
            runner = make_executor(conf.executor, workers=workers or default_workers(),
                                   ray_address=conf.ray_address, task_timeout=conf.ray_task_timeout)
            result = build_dataset(src, target, the_recipe, handle, force=force, executor=runner,
                                   progress=is_tty() and not no_progress)
        _summary(result)


def _summary(result) -> None:
    state = "up to date" if result.up_to_date else f"{result.processed} images processed, {result.reused} reused"
    typer.echo(f"{result.out}: {result.samples} samples in {result.shards} shards, "
               f"{result.bytes / 1e6:.1f} MB ({state})")
    rejected = sum(result.rejects.values())
    typer.echo(f"rejects: {rejected}")
    for reason, count in sorted(result.rejects.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {reason}: {count}")
    typer.echo("buckets: " + ", ".join(f"{b} {n}" for b, n in result.buckets.items()))
    if result.placements:  # which machines (Ray nodes) ran this run's tasks
        typer.echo(f"tasks ran on {len(result.placements)} node(s): "
                   + ", ".join(f"{where} {n}" for where, n in result.placements.items()))


def verify(
    dataset: Annotated[str, typer.Argument(help="A dataset folder made by `kdata build` (a path or a URL).")],
) -> None:
    """Re-hash every shard against index.json and check manifest/shard agreement (exit 1 on any mismatch)."""
    with clean_errors():
        from kohaku_data.assembly.verify import verify_dataset

        report = verify_dataset(dataset)
        for problem in report.problems:
            typer.echo(f"MISMATCH {problem}", err=True)
        verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        typer.echo(f"{dataset}: {report.shards} shards, {report.samples} samples, "
                   f"{report.bytes / 1e6:.1f} MB: {verdict}")
        if not report.ok:
            raise typer.Exit(1)
