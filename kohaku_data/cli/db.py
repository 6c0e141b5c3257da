"""`kdata db init|info|import|migrate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kohaku_data.cli.common import DbOption, clean_errors, is_tty, print_error, say, settings

app = typer.Typer(help="Create, inspect, import into and migrate a Danbooru2023 sqlite.", no_args_is_help=True)


@app.command("init")
def init(db: DbOption = None) -> None:
    """Create an empty database with the published schema, migrated to the current version."""
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.migrate import migrate
    from kohaku_data.keepers import SUMMARY_KEEPERS

    with clean_errors(kept="The DB keeps what it had", target="the DB"):
        path = settings(db=db).require_db()
        with DanbooruDB.create(path) as handle:
            applied = migrate(handle, keepers=SUMMARY_KEEPERS)
        say(f"created {path} (migrations: {', '.join(applied) or 'none'})")


@app.command("info")
def info(
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Counts of posts, tags and relations; schema version; date range; posts per rating."""
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.info import db_info
    from kohaku_data.db.provenance import sources

    with clean_errors():
        path = settings(db=db).require_db()
        with DanbooruDB.open(path, readonly=True) as handle:
            figures = db_info(handle)
            imported = sources(handle)
        if as_json:
            figures["sources"] = imported
            typer.echo(json.dumps(figures, indent=2))
            return
        for key, value in figures.items():
            if key == "ratings":
                value = ", ".join(f"{k} {v:,}" for k, v in value.items())
            elif key == "date_range":
                value = f"{value[0]} .. {value[1]}"
            elif isinstance(value, int) and not isinstance(value, bool):
                value = f"{value:,}"
            say(f"{key:>15}: {value}")
        for src in imported:
            say(f"{'source':>15}: {src['name']} ({src['size']:,} bytes, sha256 {src['sha256'][:16]}…, "
                f"{src['format']}): {src['rows']:,} rows, {src['inserted']:,} inserted, {src['updated']:,} updated, "
                f"{src['rejected']:,} rejected; imported {src['last_imported_at']}")


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help=(
        "Posts: posts.json pages, JSONL(.gz) dumps, parquet snapshots (danbooru2026, danbooru2025-metadata, "
        "danbooru2024 metadata.parquet). Tags: tag CSVs, tags parquet (name, category). Tag implications / "
        "aliases: API pages (JSON/JSONL) whose name says implications or aliases. Recognised by content."
    ))],
    db: DbOption = None,
    rejects: Annotated[
        Path | None, typer.Option("--rejects", help="JSONL file for bad records (default: DB.rejects.jsonl).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Records per transaction.")] = 10_000,
    null_deleted: Annotated[str, typer.Option(
        "--null-deleted", help="Parquet rows whose is_deleted is NULL: keep (as not deleted, listed in "
        "kdata_post_unknown) or drop (rejected).")] = "keep",
) -> None:
    """Upsert posts, tags, tag implications and aliases (idempotent; rerun after an interruption).

    Applies pending migrations; records each file's name, size, sha256, counts and policies (`kdata db info`)."""
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.importer import SnapshotPolicy, UnknownInputError, import_files
    from kohaku_data.keepers import SUMMARY_KEEPERS

    if null_deleted not in ("keep", "drop"):
        print_error(f"--null-deleted must be keep or drop, not {null_deleted!r}")
        raise typer.Exit(2)
    kept = "Every batch committed before the error is kept in the DB (importing again is idempotent)"
    with clean_errors(kept=kept, target="the DB"):
        path = settings(db=db).require_db()
        try:
            with DanbooruDB.open(path) as handle:
                summary = import_files(handle, files, rejects_path=rejects, batch_size=batch_size,
                                       progress=is_tty(), policy=SnapshotPolicy(null_deleted=null_deleted),
                                       keepers=SUMMARY_KEEPERS)
        except UnknownInputError as exc:
            print_error(f"{exc}; nothing was imported")
            raise typer.Exit(2) from None
        p, t, r = summary.posts, summary.tags, summary.relations
        rate = (p.inserted + p.updated + p.unchanged) / summary.seconds if summary.seconds else 0.0
        if summary.migrations_applied:
            say(f"migrations applied: {', '.join(summary.migrations_applied)}")
        for src in summary.sources:
            say(f"{src.name}: {src.format}, {src.rows:,} records")
        say(
            f"posts: {p.inserted:,} inserted, {p.updated:,} updated, {p.unchanged:,} unchanged "
            f"({rate:,.0f}/s); tags: {t.inserted:,} inserted, {t.updated:,} updated, "
            f"{t.aliases:,} aliases; implications: {r.implications:,}, aliases: {r.aliases:,} active, "
            f"{r.removed:,} retired pairs removed; {summary.seconds:.1f}s"
        )
        if summary.rejected:
            say(f"rejected {summary.rejected:,} records: see {summary.rejects_path}")
        else:
            say("rejected 0 records")


@app.command("migrate")
def migrate_(db: DbOption = None) -> None:
    """Apply pending schema migrations (a no-op when the file is current)."""
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.migrate import current_version, migrate
    from kohaku_data.keepers import SUMMARY_KEEPERS

    with clean_errors(kept="The DB stays at its last complete migration", target="the DB"):
        path = settings(db=db).require_db()
        with DanbooruDB.open(path) as handle:
            applied = migrate(handle, keepers=SUMMARY_KEEPERS)
            version = current_version(handle)
        if applied:
            say(f"applied {', '.join(applied)}; {path} is at version {version}")
        else:
            say(f"{path} is up to date (version {version})")


@app.command("attach")
def attach(
    file: Annotated[Path, typer.Argument(help="A .parquet or .csv file with `id` (or `post_id`) and a value column.")],
    name: Annotated[str, typer.Option("--name", help="Name of the attached column (rerunning replaces it).")],
    column: Annotated[str | None, typer.Option("--column", help="Value column (default: the only non-id column).")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="numeric or text (default: from the column's values).")] = None,
    db: DbOption = None,
) -> None:
    """Store a per-post column from outside (aesthetic score, caption text) in kdata tables."""
    from kohaku_data.curation.attached import attach_column
    from kohaku_data.db import DanbooruDB

    with clean_errors(kept="The DB keeps the column as it was before this attach", target="the DB"):
        path = settings(db=db).require_db()
        with DanbooruDB.open(path) as handle:
            result = attach_column(handle, file, name, column, kind)
        reasons = ", ".join(f"{k} {v:,}" for k, v in result.reasons.items()) or "none"
        say(f"attached {result.name} ({result.kind}): {result.posts:,} posts; "
            f"rejected {result.rejected:,} ({reasons})")
        bad = result.reasons.get("bad_value", 0)
        if bad and result.kind == "numeric":
            shown = ", ".join(repr(v) for v in result.bad_examples)
            say(f"{bad:,} values are not numbers (e.g. {shown}): they are rejects (reason bad_value, table "
                f"kdata_attached_reject), the column stays numeric"
                + ("; if it is text, rerun with --kind text" if result.guessed else ""))
