"""`kdata --help` and the `--help` of every command and sub-command, each in a real process.

The commands are read from the Typer app (its click group), so a command added later is checked
without touching this file: a help text that crashes (a bad annotation, a lazy import that fails
at parse time) is a dead end before the user has typed anything."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from cli_support import run_kdata
from kohaku_data.cli import app


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under `command`, itself first (`()` is `kdata` alone). Groups are found by
    their `commands` mapping: Typer ships its own copy of click, so no isinstance check holds for both."""
    paths = [prefix]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += command_paths(sub, (*prefix, name))
    return paths


PATHS = command_paths(typer.main.get_command(app))


def test_the_app_has_the_commands_the_readme_lists() -> None:
    """Discovery itself can fail: an empty or flat walk would make the test below vacuous."""
    names = {" ".join(p) for p in PATHS}
    assert {"", "db", "db attach", "db import", "build", "diff", "serve", "caption"} <= names, names
    assert len(PATHS) >= 15, names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "kdata")
def test_help_exits_0_without_a_traceback(path: tuple[str, ...]) -> None:
    done = run_kdata(*path, "--help", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Usage" in done.stdout and done.stderr.strip() == "", done.stderr
    assert f"kdata {' '.join(path)}".strip() in " ".join(done.stdout.split())
