"""Shared fixtures: real sqlite files made from the published DDL."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohaku_data.db import DanbooruDB

DATA = Path(__file__).parent / "data"


@pytest.fixture
def empty_db(tmp_path: Path) -> DanbooruDB:
    """A fresh file with exactly the published schema."""
    db = DanbooruDB.create(tmp_path / "danbooru.db")
    yield db
    db.close()


@pytest.fixture
def posts_sample_path() -> Path:
    """10 real posts as Danbooru's posts.json returns them."""
    return DATA / "danbooru-posts-sample.json"


@pytest.fixture(autouse=True)
def _cli_exceptions_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `CliRunner().invoke` in the suite fails its test when an exception escaped the command.

    CliRunner turns an escaped exception into exit code 1 — the same code as `kdata diff`'s
    "different" or a clean one-sentence error — so a traceback would otherwise pass as success.
    A user never sees `result.exception` that is a SystemExit (typer.Exit, click usage errors)."""
    from typer.testing import CliRunner

    invoke = CliRunner.invoke

    def checked(self: CliRunner, *args: object, **kwargs: object) -> object:
        result = invoke(self, *args, **kwargs)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            trace = "".join(traceback.format_exception(*result.exc_info))
            pytest.fail(f"an exception escaped the CLI ({args[1] if len(args) > 1 else kwargs.get('args')}):\n{trace}")
        return result

    monkeypatch.setattr(CliRunner, "invoke", checked)
