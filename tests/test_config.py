from pathlib import Path

import pytest
from typer.testing import CliRunner

from kohaku_data.cli import app
from kohaku_data.config import ConfigError, Recipe, load_recipe, load_settings
from kohaku_data.db import DanbooruDB


def test_option_beats_environment_beats_settings_file(tmp_path, monkeypatch):
    (tmp_path / "kdata.toml").write_text('db = "from-file.db"\nrecipe = "/abs/r.toml"\n')
    monkeypatch.delenv("KDATA_DB", raising=False)
    monkeypatch.delenv("KDATA_RECIPE", raising=False)
    from_file = load_settings(cwd=tmp_path)
    assert from_file.db == tmp_path / "from-file.db"
    assert from_file.recipe == Path("/abs/r.toml")
    monkeypatch.setenv("KDATA_DB", "from-env.db")
    assert load_settings(cwd=tmp_path).db == Path("from-env.db")
    assert load_settings(db=Path("opt.db"), cwd=tmp_path).db == Path("opt.db")


def test_no_database_anywhere_is_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("KDATA_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["db", "info"])
    assert result.exit_code == 1
    assert "No database set: pass --db PATH, set KDATA_DB" in result.output
    assert "Traceback" not in result.output


def test_settings_file_is_used_by_commands(tmp_path, monkeypatch):
    monkeypatch.delenv("KDATA_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    DanbooruDB.create(tmp_path / "mine.db").close()
    (tmp_path / "kdata.toml").write_text('db = "mine.db"\n')
    result = CliRunner().invoke(app, ["db", "info", "--json"])
    assert result.exit_code == 0, result.output
    assert '"posts": 0' in result.output


def test_bad_settings_file_and_recipes_say_what_is_wrong(tmp_path):
    (tmp_path / "kdata.toml").write_text('dbb = "x.db"\n')
    with pytest.raises(ConfigError, match="unknown settings"):
        load_settings(cwd=tmp_path)
    bad = tmp_path / "r.toml"
    bad.write_text('name = "x"\n[image]\nbuckt = "kohaku-xl"\n')
    with pytest.raises(ConfigError, match="buckt"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.toml")


def test_recipe_hash_covers_defaults_and_changes_with_any_setting(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "x"\nversion = "1"\n')
    assert load_recipe(path).sha256() == Recipe(name="x", version="1").sha256()
    path.write_text('name = "x"\nversion = "1"\n[caption]\nkeep_separator = "||"\n')
    assert load_recipe(path).sha256() != Recipe(name="x", version="1").sha256()


def test_shipped_recipes_load():
    root = Path(__file__).parents[1] / "pipelines"
    recipes = {p.stem: load_recipe(p) for p in root.glob("*.toml")}
    assert {"demo", "kohaku-xl-gamma"} <= set(recipes)
    gamma = recipes["kohaku-xl-gamma"]
    assert gamma.image.bucket_preset().min_area == 768 * 1024


def test_shipped_recipes_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pipelines/ here: the installed kohaku_data.recipes answer
    repo = Path(__file__).resolve().parents[1] / "pipelines"
    for name in ("demo", "kohaku-xl-gamma"):
        shipped = load_recipe(Path(name))
        assert shipped == load_recipe(repo / f"{name}.toml")
        assert load_recipe(Path(f"pipelines/{name}.toml")) == shipped
    with pytest.raises(ConfigError, match="shipped recipes by name"):
        load_recipe(Path("no-such-recipe"))
