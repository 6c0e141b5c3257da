"""The shipped curated recipe end to end on `kdata sample` output: dedup, tag cleanup, year
numbers and weights together, reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kohaku_data.config import load_recipe


def test_curated_recipe_builds_on_sample_output(tmp_path: Path) -> None:
    from kohaku_data.assembly import build_dataset
    from kohaku_data.db import DanbooruDB
    from kohaku_data.sample import write_sample
    from test_build_support import folder_bytes

    write_sample(tmp_path / "s", posts=40, seed=1)
    recipe = load_recipe(Path(__file__).parents[1] / "pipelines" / "curated.toml")
    with DanbooruDB.open(tmp_path / "s" / "danbooru.db", readonly=True) as db:
        build_dataset(tmp_path / "s" / "raw", tmp_path / "a", recipe, db, workers=1)
        build_dataset(tmp_path / "s" / "raw", tmp_path / "b", recipe, db, workers=2)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["dedup"]["policy"] == "near" and stats["dedup"]["hashed"] > 0
    assert stats["weights"]["categories"] == ["artist", "character"]
    manifest = pl.read_parquet(tmp_path / "a" / "manifest.parquet")
    assert manifest.height and (manifest["weight"] >= 1.0).all()
    dated = manifest.filter(pl.col("year").is_not_null())
    assert dated.height and all(f"year {c[:4]}" in cap for c, cap in zip(dated["created_at"], dated["caption"]))
    lock = json.loads((tmp_path / "a" / "dataset.lock").read_text())
    assert lock["caption_thresholds"]["curation"]["tag_rules"]["min_general_posts"] == 2
