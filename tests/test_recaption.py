"""Re-captioning a built dataset: new folder, image bytes untouched, captions from the new config/DB."""

from __future__ import annotations

import shutil
import sqlite3
import tarfile
from pathlib import Path

import polars as pl
import pytest

from kohaku_data.assembly import BuildError
from kohaku_data.assembly.recaption import recaption_dataset
from kohaku_data.assembly.verify import verify_dataset
from kohaku_data.db import DanbooruDB
from test_build_support import build, folder_bytes, make_inputs, small_recipe


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recap")
    inputs = make_inputs(root, n_posts=20)
    out = root / "ds"
    build(inputs, out)
    return inputs, out


def _members(out: Path) -> dict[str, bytes]:
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return found


def test_new_caption_config_keeps_image_bytes(setup):
    inputs, out = setup
    before = folder_bytes(out)
    recipe = small_recipe(caption={"tag_order": "alpha", "keep_separator": None})
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        info = recaption_dataset(out, recipe, db)
    new = Path(info["out"])
    assert new.parent == out.parent and new != out
    assert folder_bytes(out) == before  # the old version is only read
    old_m, new_m = _members(out), _members(new)
    assert old_m.keys() == new_m.keys()
    images = [n for n in old_m if n.endswith((".webp", ".png"))]
    assert images and all(old_m[n] == new_m[n] for n in images)
    assert any(old_m[n] != new_m[n] for n in old_m if n.endswith(".txt"))
    assert all("|||" not in new_m[n].decode() for n in new_m if n.endswith(".txt"))
    manifest = pl.read_parquet(new / "manifest.parquet")
    assert all(new_m[f"{k}.txt"].decode() == c for k, c in zip(manifest["key"], manifest["caption"]))
    assert verify_dataset(new).ok
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        assert recaption_dataset(out, recipe, db)["up_to_date"]


def test_new_db_scores_change_quality_and_deleted_posts_drop(setup, tmp_path):
    inputs, out = setup
    db_copy = tmp_path / "newer.db"
    shutil.copy(inputs.db, db_copy)
    keys = pl.read_parquet(out / "manifest.parquet")["key"].to_list()
    with sqlite3.connect(db_copy) as conn:
        conn.execute("UPDATE post SET fav_count = fav_count + id * 100, score = score + id")
        conn.execute("DELETE FROM post WHERE id = ?", (keys[0],))
    conn.close()
    recipe = small_recipe(version="2")
    with DanbooruDB.open(db_copy, readonly=True) as db:
        info = recaption_dataset(out, recipe, db)
    new = Path(info["out"])
    assert new.name == "t-2"
    rejects = pl.read_parquet(new / "rejects.parquet")
    assert rejects.filter(pl.col("key") == keys[0])["reason"].to_list() == ["post_missing"]
    old_q = pl.read_parquet(out / "manifest.parquet").select("key", "quality")
    new_q = pl.read_parquet(new / "manifest.parquet").select("key", "quality")
    assert keys[0] not in new_q["key"].to_list()
    assert not old_q.filter(pl.col("key") != keys[0]).equals(new_q)
    assert verify_dataset(new).ok


def test_other_image_settings_are_refused(setup):
    inputs, out = setup
    with DanbooruDB.open(inputs.db, readonly=True) as db, pytest.raises(BuildError, match="image"):
        recaption_dataset(out, small_recipe(image={"bucket": "sd15-512"}), db)
