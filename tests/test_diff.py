"""`kdata diff A B`: real builds of one sample DB compared through the real CLI (exit 0 / 1 / 2)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from kohaku_data.assembly.diff import diff_datasets
from kohaku_data.assembly.recaption import recaption_dataset
from kohaku_data.cli import app
from kohaku_data.db import DanbooruDB
from cli_support import run_kdata
from test_build_support import build, make_inputs, small_recipe


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    inputs = make_inputs(root, n_posts=20)
    a, b = root / "a", root / "b"
    build(inputs, a)
    build(inputs, b, workers=2)
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        # a shorter caption (no keep separator) moves every later member: offsets are placement only
        recipe = small_recipe(caption={"tag_order": "alpha", "keep_separator": None})
        recap = Path(recaption_dataset(a, recipe, db)["out"])
    other = root / "other"
    build(inputs, other, small_recipe(shard_max_bytes=250_000))
    return inputs, {"a": a, "b": b, "recap": recap, "other": other, "root": root}


def kdata(*args: str):
    return CliRunner().invoke(app, ["diff", *map(str, args)])


def _manifest(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "manifest.parquet")


def test_two_builds_of_one_recipe_are_identical(builds):
    _, d = builds
    result = kdata(d["a"], d["b"])
    assert result.exit_code == 0, result.output
    assert "identical" in result.output.splitlines()[0]
    report = json.loads(kdata(d["a"], d["b"], "--json").output)
    assert report["identical"] is True and report["lock"] == [] and report["columns"] == {}
    assert report["samples"]["common"] == _manifest(d["a"]).height > 0


def test_recaption_is_captions_changed_images_identical(builds):
    _, d = builds
    result = kdata(d["a"], d["recap"], "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    old, new = _manifest(d["a"]), _manifest(d["recap"])
    expected = sum(x != y for x, y in zip(old.sort("key")["caption"], new.sort("key")["caption"]))
    assert expected > 0
    assert report["captions"]["changed"] == expected
    assert report["images"]["changed"] == 0 and report["metadata"]["changed"] == 0
    assert report["placement"]["columns"].get("txt_size", 0) > 0  # member sizes / offsets: placement
    assert report["samples"]["added"] == report["samples"]["removed"] == 0
    assert report["summary"].startswith(f"captions changed ({expected}), images identical")
    recipe_keys = [c["key"] for c in report["lock"] if c["key"].startswith("recipe.")]
    assert recipe_keys == ["recipe.caption.keep_separator", "recipe.caption.tag_order"]
    change = next(c for c in report["lock"] if c["key"] == "recipe.caption.tag_order")
    assert (change["a"], change["b"]) == ("popularity", "alpha")
    first = report["columns"]["caption"]["examples"][0]
    assert first["a"] == old.filter(pl.col("key") == first["key"])["caption"][0]
    terminal = kdata(d["a"], d["recap"])
    assert terminal.exit_code == 1 and "images identical" in terminal.output and "tag_order" in terminal.output


def test_other_recipe_key_is_shown(builds):
    _, d = builds
    report = diff_datasets(d["a"], d["other"])
    assert not report["identical"]
    keys = {c["key"]: (c["a"], c["b"]) for c in report["lock"]}
    assert keys["recipe.shard_max_bytes"] == (400_000, 250_000)
    assert report["images"]["changed"] == 0 and report["captions"]["changed"] == 0
    assert report["shards"]["b"] > report["shards"]["a"]  # smaller cap, more shards
    assert "shard_max_bytes" in report["summary"]


def test_added_removed_and_shifts(builds, tmp_path):
    inputs, d = builds
    subset = tmp_path / "subset"
    build(inputs, subset, small_recipe(query="rating:g,s"))
    report = diff_datasets(subset, d["a"])
    old, new = set(_manifest(subset)["key"]), set(_manifest(d["a"])["key"])
    assert new - old and report["samples"]["added"] == len(new - old) and report["samples"]["removed"] == 0
    assert report["samples"]["added_examples"] == sorted(new - old)[:5]
    buckets = {r["value"]: (r["a"], r["b"]) for r in report["buckets"]}
    counts_a = _manifest(subset).group_by("bucket").len()
    assert all(buckets[b][0] == n for b, n in counts_a.iter_rows())
    assert sum(b for _, b in buckets.values()) == len(new)
    back = diff_datasets(d["a"], subset)
    assert back["samples"]["removed"] == len(new - old) and back["samples"]["added"] == 0


def test_url_sides_and_errors(builds):
    _, d = builds
    assert kdata(d["a"], f"file://{d['b']}").exit_code == 0  # a URL goes through kohaku_data.storage
    missing = kdata(d["a"], d["root"] / "nope")
    assert missing.exit_code == 2
    assert "not a finished dataset" in missing.output and "Traceback" not in missing.output


def test_readme_flow_in_a_real_process(builds):
    """Build, re-caption, diff — as a user runs it: exit 1 means "different" only when no traceback came."""
    _, d = builds
    run = run_kdata("diff", d["a"], d["recap"], timeout=120)
    assert "Error" not in run.stderr, run.stderr
    assert run.returncode == 1, run.stderr
    assert "images identical" in run.stdout and "recipe.caption.tag_order" in run.stdout  # the lock table
    assert "caption" in run.stdout.split("recipe.caption")[0]  # the column table comes first
