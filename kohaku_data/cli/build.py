"""`kdata build` and `kdata verify`."""

from __future__ import annotations

from typing import Annotated

import typer

from kohaku_data.cli.common import (
    DbOption, RecipeOption, WorkersOption, clean_errors, default_workers, is_tty, print_error,
)

INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def build(
    src: Annotated[str, typer.Option("--src", help="Folder of <id>.<ext> files (nested allowed) or danbooru2023 tars; a path or a URL (s3://bucket/danbooru2023/).")],
    src_index: Annotated[str | None, typer.Option("--src-index", help="Folder or URL holding the hfutils .json indexes of the tars under --src at the same relative paths (e.g. hf://datasets/deepghs/danbooru2023_index for nyanko7/danbooru2023); default: beside each tar.")] = None,
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
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check the recipe and show what the build would do (as `kdata recipe check`); build nothing.")] = False,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Re-hash every shard of the finished build in --out and rewrite the damaged or missing ones "
                         "to their recorded bytes (the recipe comes from its dataset.lock unless --recipe is given).")] = False,
) -> None:
    """Build webdataset shards, manifest.parquet, index.json and dataset.lock from a recipe (resumable)."""
    kept = "The shards already committed and the staged images beside the output (its .staging/) are kept"
    try:
        with clean_errors(kept=kept):
            from kohaku_data.assembly import build_dataset
            from kohaku_data.assembly.executors import make_executor
            from kohaku_data.config import load_settings
            from kohaku_data.db import DanbooruDB

            from kohaku_data.sources import source_root

            src = source_root(src, src_index)
            conf = load_settings(db=db, recipe=recipe, executor=executor, ray_address=ray_address)
            the_recipe = _recipe_for(conf.recipe, out if repair and recipe is None else None)
            target = out or conf.datasets / the_recipe.dataset_name
            if dry_run:
                from kohaku_data.cli.recipe import show_preview

                show_preview(the_recipe, str(conf.recipe or "the default recipe"), conf.db, src)
                typer.echo("dry run: nothing was built; run the same command without --dry-run to build")
                return
            with DanbooruDB.open(conf.require_db(), readonly=True) as handle:
                runner = make_executor(conf.executor, workers=workers or default_workers(),
                                       ray_address=conf.ray_address, task_timeout=conf.ray_task_timeout)
                result = build_dataset(src, target, the_recipe, handle, force=force, executor=runner,
                                       progress=is_tty() and not no_progress, repair=repair)
            _summary(result)
            _stop_unless_usable(result)
    except KeyboardInterrupt:
        print_error(f"interrupted: rerun the same command to resume. {kept}.")
        raise typer.Exit(INTERRUPTED) from None


def _recipe_for(path, lock_of):
    """The recipe at `path`; for `--repair` without `--recipe`, the one in `lock_of`'s dataset.lock."""
    from kohaku_data.config import Recipe, load_recipe

    if lock_of is not None:
        from kohaku_data.assembly.lock import read_lock

        lock = read_lock(lock_of)
        if lock is not None:
            return Recipe.model_validate(lock["recipe"])
    return load_recipe(path)


def _summary(result) -> None:
    from kohaku_data.assembly.hints import reject_fix

    state = "up to date" if result.up_to_date else f"{result.processed} images processed, {result.reused} reused"
    if result.repaired:
        state = f"repaired {len(result.repaired)} shard(s): {', '.join(result.repaired)}"
    typer.echo(f"{result.out}: {result.samples} samples in {result.shards} shards, "
               f"{result.bytes / 1e6:.1f} MB ({state})")
    rejected = sum(result.rejects.values())
    typer.echo(f"rejects: {rejected}" + (" (rows in rejects.parquet; what to do about each:)" if rejected else ""))
    for reason, count in sorted(result.rejects.items(), key=lambda kv: (-kv[1], kv[0])):
        typer.echo(f"  {reason}: {count} — {reject_fix(reason)}")
    typer.echo("buckets: " + ", ".join(f"{b} {n}" for b, n in result.buckets.items()))
    if result.placements:  # which machines (Ray nodes) ran this run's tasks
        typer.echo(f"tasks ran on {len(result.placements)} node(s): "
                   + ", ".join(f"{where} {n}" for where, n in result.placements.items()))
    if result.samples and not result.rejects.get("internal_error"):
        typer.echo(f"next: kdata verify {result.out}   (its card: {result.out}/README.md; "
                   f"for a trainer: kdata export {result.out} EXPORT_DIR)")


def _stop_unless_usable(result) -> None:
    """A build without samples, or one where images met a bug, is not a success (exit 1)."""
    if result.rejects.get("internal_error"):
        where = f"the first traceback is in {result.error_log}" if result.error_log else "see rejects.parquet"
        print_error(f"{result.rejects['internal_error']} image(s) failed with an internal error, a bug in kdata "
                    f"rather than bad input: {where}; please report it (a rerun retries them).")
        raise typer.Exit(1)
    if result.samples == 0:
        print_error("the build made 0 samples: every input was rejected or the recipe selects no post with a "
                    "file; fix the causes listed above (check the recipe with `kdata recipe check`), then rerun.")
        raise typer.Exit(1)


def verify(
    dataset: Annotated[str, typer.Argument(help="A dataset folder made by `kdata build` (a path or a URL).")],
) -> None:
    """Re-hash every shard against index.json and check manifest/shard agreement (exit 1 on any mismatch)."""
    with clean_errors():
        from kohaku_data.assembly.verify import verify_dataset

        report = verify_dataset(dataset)
        report.problems += _latent_problems(dataset)
        for problem in report.problems:
            typer.echo(f"MISMATCH {problem}", err=True)
        verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        typer.echo(f"{dataset}: {report.shards} shards, {report.samples} samples, "
                   f"{report.bytes / 1e6:.1f} MB: {verdict}")
        if not report.ok:
            print_error(f"{dataset} does not match its index. To rewrite the damaged or missing shards to their "
                        f"recorded bytes, run: kdata build --repair --out {dataset} --src SRC --db DB "
                        "(SRC and DB as the build used them; the recipe comes from its dataset.lock).")
            raise typer.Exit(1)


def _latent_problems(dataset: str) -> list[str]:
    """The latent set's problems (`DATASET/latents/`, kdata latents), when the dataset (a folder or a URL) has one."""
    from kohaku_data.latents.verify import has_latents, verify_latents

    return verify_latents(dataset) if has_latents(dataset) else []
