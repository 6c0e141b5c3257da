"""The `kdata` command: Typer sub-commands, one module per stage. No logic lives here."""

from __future__ import annotations

import typer

from kohaku_data.cli import build, caption, db, images, query, sample, service
from kohaku_data.cli import dedup
from kohaku_data.cli import diff
from kohaku_data.cli import export
from kohaku_data.cli import recipe
from kohaku_data.cli import latents

app = typer.Typer(
    name="kdata",
    help="Build lossless, reproducible anime training datasets from Danbooru2023 metadata.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(db.app, name="db")
app.add_typer(caption.app, name="caption")
app.add_typer(recipe.app, name="recipe")
app.command("query", context_settings=query.CONTEXT)(query.query)
app.command("sample")(sample.sample)
app.command("images")(images.images)
app.command("build")(build.build)
app.command("verify")(build.verify)
app.command("latents")(latents.latents)
app.command("dedup")(dedup.dedup)
app.command("diff")(diff.diff)
app.command("export")(export.export)
app.command("sync")(service.sync)
app.command("serve")(service.serve)

__all__ = ["app"]
