"""Options and helpers shared by the CLI modules."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kohaku_data.errors import KdataError, write_problem

if TYPE_CHECKING:
    from kohaku_data.config import Settings

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

@contextlib.contextmanager
def clean_errors(kept: str = "", target: str = "the output") -> Iterator[None]:
    """Turn kdata's own errors into one clear line on stderr and exit status 1.

    A failed write (full disk, size limit, quota, read-only, permissions) becomes one sentence
    too: what could not be written (the file, else `target`), what is kept (`kept`, said by the
    command) and that a rerun resumes. A file-size limit (RLIMIT_FSIZE) would kill the process
    with SIGXFSZ before Python sees EFBIG, so the signal is ignored; worker processes inherit that."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    except Exception as exc:
        # A write failure wins even under a kdata error (a migration that failed on a full disk).
        problem = write_problem(exc)
        if problem is None and not isinstance(exc, KdataError):
            raise
        print_error(problem.sentence(kept, target) if problem else str(exc))
        raise typer.Exit(getattr(exc, "exit_code", 1) if problem is None else 1) from None


def say(text: str, *, stderr: bool = False) -> None:
    """One line of kdata's own output (rich markup, no highlighting or wrapping). rich is
    imported here, not at start-up: every command starts ~13 ms sooner."""
    from rich.console import Console

    Console(stderr=stderr, emoji=False, soft_wrap=True).print(text, highlight=False)


def print_error(text: str) -> None:
    """`error: TEXT` on stderr, TEXT shown as written (no markup)."""
    from rich.markup import escape

    say("[bold red]error:[/] " + escape(text), stderr=True)


def settings(db: Path | None = None, recipe: Path | None = None) -> Settings:
    # Imported here: pydantic and the config models cost ~90 ms, which `kdata query` need not pay
    # before it knows what it runs.
    from kohaku_data.config import load_settings

    return load_settings(db=db, recipe=recipe)


def db_path(db: Path | None) -> Path:
    """The DB to open: `--db` as given (without loading the config models: `kdata query`
    answers in a third of a second, ~30 ms of it would be pydantic), else the settings' db."""
    return db if db is not None else settings().require_db()


def default_workers() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def is_tty() -> bool:
    return sys.stderr.isatty()
