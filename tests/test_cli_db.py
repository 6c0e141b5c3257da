"""`kdata db init|info|import|migrate` through Typer's CliRunner, on real files."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kohaku_data.cli import app
from kohaku_data.db.migrate import available

runner = CliRunner()


def test_init_import_info_migrate(tmp_path, posts_sample_path):
    db = tmp_path / "d.db"
    result = runner.invoke(app, ["db", "init", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert db.is_file() and "0001_kdata_tables" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(json.loads(posts_sample_path.read_text())[0]) + "\nnot json\n")
    result = runner.invoke(app, ["db", "import", str(posts_sample_path), str(bad), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "10 inserted" in result.output and "1 unchanged" in result.output
    default_rejects = tmp_path / "d.db.rejects.jsonl"
    assert str(default_rejects) in result.output.replace("\n", "")
    (reject,) = [json.loads(x) for x in default_rejects.read_text().splitlines()]
    assert reject["line"] == 2 and reject["record"] == "not json"

    result = runner.invoke(app, ["db", "info", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["posts"], info["relations"]) == (10, 293)
    assert info["schema_version"] == available()[-1].version
    assert sum(info["ratings"].values()) == 10 and set(info["ratings"]) == {"general", "sensitive", "questionable", "explicit"}
    assert info["date_range"] == ["2023-03-17T03:44:13.339-04:00", "2023-03-17T03:50:48.762-04:00"]

    result = runner.invoke(app, ["db", "info", "--db", str(db)])
    assert result.exit_code == 0 and "relations" in result.output

    result = runner.invoke(app, ["db", "migrate", "--db", str(db)])
    assert result.exit_code == 0 and "up to date" in result.output


def test_db_from_environment_and_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDATA_DB", raising=False)
    result = runner.invoke(app, ["db", "info"])
    assert result.exit_code == 1 and "--db" in result.output

    monkeypatch.setenv("KDATA_DB", str(tmp_path / "env.db"))
    assert runner.invoke(app, ["db", "init"]).exit_code == 0
    assert (tmp_path / "env.db").is_file()
    result = runner.invoke(app, ["db", "init"])
    assert result.exit_code == 1 and "already exists" in result.output

    result = runner.invoke(app, ["db", "import", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 1 and "does not exist" in result.output

    result = runner.invoke(app, ["db", "migrate", "--db", str(tmp_path / "nope.db")])
    assert result.exit_code == 1 and "kdata db init" in result.output
