"""`kdata caption` through the real CLI: parquet, JSONL and a folder of .txt files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kohaku_data.captions import compute_thresholds
from kohaku_data.captions.reference import reference_captions
from kohaku_data.cli import app
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB
from test_captions import make_db

runner = CliRunner()


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "danbooru.db"
    make_db(path, seed=4, posts=120).close()
    return path


@pytest.fixture(scope="module")
def expected(db_path: Path) -> dict[int, str]:
    with DanbooruDB.open(db_path, readonly=True) as db:
        ids = [r[0] for r in db.connection().execute("SELECT id FROM post")]
        config = CaptionConfig()
        return {r["id"]: r["caption"] for r in reference_captions(db, ids, config, compute_thresholds(db, config))}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _run(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_parquet(db_path: Path, tmp_path: Path, expected: dict[int, str]) -> None:
    out = tmp_path / "c.parquet"
    _run("caption", "--db", str(db_path), "--out", str(out), "--query", "")
    frame = pl.read_parquet(out)
    assert dict(frame.select("id", "caption").iter_rows()) == expected
    assert frame.schema["tags_general"] == pl.List(pl.String)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert out.stat().st_mode & 0o044 == 0o044 & ~_umask()  # readable by others, as the umask says


def test_jsonl(db_path: Path, tmp_path: Path, expected: dict[int, str]) -> None:
    out = tmp_path / "c.jsonl"
    _run("caption", "--db", str(db_path), "--out", str(out), "--chunk-size", "17")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"]: r["caption"] for r in rows} == expected
    assert [r["id"] for r in rows] == sorted(expected)


def test_workers_write_the_same_file(db_path: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    _run("caption", "--db", str(db_path), "--out", str(one), "--chunk-size", "30")
    _run("caption", "--db", str(db_path), "--out", str(two), "--chunk-size", "30", "--workers", "2")
    assert one.read_bytes() == two.read_bytes()
    assert len(one.read_text().splitlines()) == 120


def test_txt_folder(db_path: Path, tmp_path: Path, expected: dict[int, str]) -> None:
    out = tmp_path / "txt"
    _run("caption", "--db", str(db_path), "--out", str(out))
    files = {int(p.stem): p.read_text(encoding="utf-8") for p in out.glob("*.txt")}
    assert files == expected


def test_recipe_setting_reaches_captions(db_path: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "t"\n[caption]\nkeep_separator = "###"\nrating = false\n')
    out = tmp_path / "c.jsonl"
    _run("caption", "--db", str(db_path), "--recipe", str(recipe), "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("###" in r["caption"] and "|||" not in r["caption"] for r in rows)
    assert all(r["rating_tag"] is None for r in rows)


def test_stats_json(db_path: Path) -> None:
    result = _run("caption", "stats", "--db", str(db_path), "--json")
    stats = json.loads(result.output)
    assert stats["posts"] == 120
    assert set(stats["thresholds"]["by_rating"]) <= {"general", "sensitive", "questionable", "explicit"}
    assert sum(v["posts"] for v in stats["year"].values()) == 120
    table = _run("caption", "stats", "--db", str(db_path))
    assert "masterpiece" in table.output


def test_bad_inputs(db_path: Path, tmp_path: Path) -> None:
    bad = runner.invoke(app, ["caption", "--db", str(db_path), "--out", str(tmp_path / "c.csv")])
    assert bad.exit_code == 1 and "parquet" in bad.output
    missing = runner.invoke(app, ["caption", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "c.jsonl")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    no_out = runner.invoke(app, ["caption", "--db", str(db_path)])
    assert no_out.exit_code == 1 and "--out" in no_out.output
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "c.jsonl").exists()


def test_parquet_of_no_posts_and_of_a_broken_db(db_path: Path, tmp_path: Path) -> None:
    """A query that matches nothing writes an empty file; a DB that breaks mid-stream writes
    nothing (no output, no temp file) and says what to do."""
    import shutil
    import sqlite3

    empty = tmp_path / "empty.parquet"
    _run("caption", "--db", str(db_path), "--out", str(empty), "--query", "id:>999999999")
    assert pl.read_parquet(empty).height == 0
    broken_db = tmp_path / "broken.db"
    shutil.copyfile(db_path, broken_db)
    with sqlite3.connect(broken_db) as conn:  # a text column holding the reader's separator
        conn.execute("UPDATE post SET md5 = 'a' || char(31) || 'b' WHERE id = (SELECT max(id) FROM post)")
    conn.close()
    out = tmp_path / "out" / "c.parquet"
    result = runner.invoke(app, ["caption", "--db", str(broken_db), "--out", str(out), "--chunk-size", "50"])
    assert result.exit_code == 1 and "repair the DB" in result.output
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("where", ["min", "max"])
def test_text_in_an_integer_column_is_one_clear_line(db_path: Path, tmp_path: Path, where: str) -> None:
    """A value sqlite keeps as text in an INTEGER column (a hand edit, a bad import) at the start
    or the end of a page: exit 1, one sentence, no output."""
    import shutil
    import sqlite3

    broken_db = tmp_path / "broken.db"
    shutil.copyfile(db_path, broken_db)
    with sqlite3.connect(broken_db) as conn:
        conn.execute(f"UPDATE post SET score = 'abc' WHERE id = (SELECT {where}(id) FROM post)")
    conn.close()
    out = tmp_path / "out" / "c.parquet"
    result = runner.invoke(app, ["caption", "--db", str(broken_db), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "post.score holds a value that is not an integer" in result.output
    assert "Traceback" not in result.output and not out.exists()
