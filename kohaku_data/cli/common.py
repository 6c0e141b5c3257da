"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from kohaku_data.config import Settings, load_settings
from kohaku_data.errors import KdataError

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="Danbooru2023 sqlite file (else $KDATA_DB, else db in ./kdata.toml)."),
]
RecipeOption = Annotated[
    Path | None,
    typer.Option("--recipe", help="Recipe pipelines/NAME.toml (else $KDATA_RECIPE, else the default recipe)."),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Worker processes (default: one per core).")
]

err_console = Console(stderr=True, emoji=False)


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Turn kdata's own errors into one clear line on stderr and exit status 1."""
    try:
        yield
    except KdataError as exc:
        err_console.print("[bold red]error:[/] " + escape(str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def settings(db: Path | None = None, recipe: Path | None = None) -> Settings:
    return load_settings(db=db, recipe=recipe)


def default_workers() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def is_tty() -> bool:
    return sys.stderr.isatty()
