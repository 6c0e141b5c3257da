"""Source artifact measures (kohaku_data/images/artifacts) and their recipe rules, on drawings of
the sample generator encoded the way Danbooru's sources are."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kohaku_data.config import ArtifactRules, CaptionConfig, ImageConfig
from kohaku_data.curation import artifacts as rules
from kohaku_data.images import process_image
from kohaku_data.images.artifacts import FIELDS, measure_artifacts
from kohaku_data.images.decode import decode
from kohaku_data.sample.drawing import anime_picture


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _measure(data: bytes) -> dict:
    return measure_artifacts(decode(data, max_pixels=10**8, animated="first"), data)


@pytest.fixture(scope="module")
def drawing() -> Image.Image:
    return anime_picture(np.random.default_rng(7), 800, 600, texture=True)


@pytest.mark.parametrize("quality,subsampling,name", [(40, 2, "4:2:0"), (75, 0, "4:4:4"), (95, 1, "4:2:2")])
def test_jpeg_settings_from_the_tables(drawing, quality, subsampling, name):
    m = _measure(_bytes(drawing, "JPEG", quality=quality, subsampling=subsampling, progressive=quality == 75))
    assert (m["jpeg_quality"], m["jpeg_tables"], m["jpeg_subsampling"]) == (quality, "ijg", name)
    assert m["jpeg_progressive"] is (quality == 75)
    assert m["jpeg_history"] is None  # a JPEG is tested for its tables, not for a past JPEG


def test_custom_tables_get_the_nearest_ijg_quality(drawing):
    luma = [max(1, round(v * 0.9)) for v in [16, 11, 10, 16, 24, 40, 51, 61] * 8]
    m = _measure(_bytes(drawing, "JPEG", qtables=[luma, luma]))
    assert m["jpeg_tables"] == "custom" and 1 <= m["jpeg_quality"] <= 100


@pytest.mark.parametrize("quality", [50, 85])
def test_png_saved_from_a_jpeg_shows_its_history(drawing, quality):
    once = Image.open(io.BytesIO(_bytes(drawing, "JPEG", quality=quality))).convert("RGB")
    m = _measure(_bytes(once, "PNG"))
    assert m["jpeg_history"] >= ArtifactRules().history_threshold
    assert abs(m["jpeg_history_quality"] - quality) <= 3


@pytest.mark.parametrize("texture", [False, True])
def test_clean_drawing_has_no_history_and_no_upscale(texture):
    m = _measure(_bytes(anime_picture(np.random.default_rng(3), 900, 700, texture=texture), "PNG"))
    assert m["jpeg_history"] < ArtifactRules().history_threshold
    assert m["upscale_factor"] == 1.0 and m["upscale_kind"] is None
    assert (m["effective_width"], m["effective_height"]) == (900, 700)


def test_webp_lossy_or_lossless(drawing):
    lossy = _measure(_bytes(drawing, "WEBP", quality=60))
    assert lossy["webp_lossy"] is True and abs(lossy["webp_quality"] - 60) <= 10
    assert lossy["jpeg_history"] is None
    lossless = _measure(_bytes(drawing, "WEBP", lossless=True))
    assert lossless["webp_lossy"] is False and lossless["webp_quality"] is None


@pytest.mark.parametrize("resample,kind", [(Image.NEAREST, "nearest"), (Image.BICUBIC, "smooth"),
                                           (Image.LANCZOS, "smooth")])
def test_upscale_is_found_with_its_factor(resample, kind):
    small = anime_picture(np.random.default_rng(5), 450, 350)
    m = _measure(_bytes(small.resize((1350, 1050), resample), "PNG"))
    assert m["upscale_kind"] == kind and 1.8 <= m["upscale_factor"] <= 4.0  # x3: rough (bench: factor error)
    assert m["effective_width"] == round(1350 / m["upscale_factor"])


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0])
def test_a_nearest_upscale_saved_as_jpeg_is_still_found(factor):
    """JPEG noise breaks nearest's exact repeated columns (most upscaled uploads are JPEGs); the
    quiet-column test finds them, and never-upscaled JPEGs of the same drawing stay clean."""
    drawing = anime_picture(np.random.default_rng(11), 900, 700)
    small = drawing.resize((round(900 / factor), round(700 / factor)), Image.LANCZOS)
    m = _measure(_bytes(small.resize((900, 700), Image.NEAREST), "JPEG", quality=90))
    assert m["upscale_kind"] == "nearest" and abs(m["upscale_factor"] - factor) <= 0.15 * factor, m
    for quality in (40, 75, 95):
        clean = _measure(_bytes(drawing, "JPEG", quality=quality))
        assert clean["upscale_factor"] == 1.0 and clean["upscale_kind"] is None, (quality, clean)


def test_palette_and_dither():
    flat = Image.new("P", (200, 200), 0)
    flat.putpalette([0, 0, 0, 255, 255, 255, 200, 30, 30] + [0] * 759)
    flat.paste(2, (50, 50, 150, 150))
    dithered = Image.fromarray(np.linspace(0, 255, 200 * 200).reshape(200, 200).astype(np.uint8)).convert("1")
    a, b = _measure(_bytes(flat, "PNG")), _measure(_bytes(dithered, "PNG"))
    assert a["colours"] == 2 and a["dither"] is None or a["dither"] < 0.05
    assert b["colours"] == 2 and b["dither"] > 0.2


@pytest.mark.parametrize("im", [Image.new("RGB", (12, 9), (9, 9, 9)), Image.new("I;16", (300, 300), 40000),
                                Image.new("RGB", (400, 300), (255, 255, 255))])
def test_tiny_odd_or_flat_images_give_nulls_not_errors(im):
    m = _measure(_bytes(im, "PNG"))
    assert set(m) == set(FIELDS)
    assert m["jpeg_history"] is None


def test_the_stage_and_the_effective_resolution():
    small = anime_picture(np.random.default_rng(9), 640, 512)
    data = _bytes(small.resize((1280, 1024), Image.BICUBIC), "PNG")
    kept = process_image(data, ImageConfig())
    assert kept.ok and kept.artifacts["upscale_factor"] >= 1.3
    rejected = process_image(data, ImageConfig(effective_resolution=True))
    assert rejected.reason == "too_small" and "effective" in rejected.detail
    native = process_image(data, ImageConfig(effective_resolution=True, too_small="native", bucket="sd15-512"))
    assert native.ok and native.width <= 1280 / kept.artifacts["upscale_factor"] + 1


def test_rules_reject_and_tag_with_the_measured_value():
    m = {"jpeg_quality": 60, "upscale_factor": 2.5, "upscale_kind": "smooth", "effective_width": 400,
         "effective_height": 300, "jpeg_history": None}
    assert rules.verdict(m, ArtifactRules()) is None
    reason, detail = rules.verdict(m, ArtifactRules(reject_jpeg_quality_below=70))
    assert reason == "jpeg_quality" and "60" in detail
    assert rules.verdict(m, ArtifactRules(reject_upscaled_above=2.0))[0] == "upscaled"
    past = {"jpeg_history": 0.8, "jpeg_history_quality": 55}
    assert rules.verdict(past, ArtifactRules(reject_jpeg_history=True))[0] == "jpeg_history"
    assert rules.verdict(past, ArtifactRules(reject_jpeg_quality_below=70))[0] == "jpeg_quality"
    earned = rules.tags(m, ArtifactRules(tag_jpeg_quality_below=70, tag_upscaled_above=2.0))
    assert earned == ["jpeg_artifacts", "upscaled"]
    caption = {"caption": "1girl, solo", "tags_meta": ["upscaled"], "tags_general": ["solo"]}
    tagged, added = rules.tag_caption(caption, earned, CaptionConfig())
    assert added == ["jpeg_artifacts"] and tagged["caption"] == "1girl, solo, jpeg artifacts"
    assert tagged["tags_meta"] == ["upscaled", "jpeg_artifacts"]


# The demo recipe's sha256 at 1b90f5b (before [artifacts], [caption.variants] and
# image.effective_resolution existed), computed by that commit's own code.
DEMO_SHA256_1B90F5B = "670e8bea066b761ac37238e0f54cf60c21796fc31e95357a3059aa2eb681bda3"


def test_recipes_that_use_no_new_keys_keep_their_hash():
    from kohaku_data.config import Recipe, load_recipe

    demo = load_recipe(Path("demo"))
    assert demo.sha256() == DEMO_SHA256_1B90F5B
    assert "artifacts" not in demo.canonical_json() and "effective_resolution" not in demo.canonical_json()
    used = demo.model_copy(update={"artifacts": ArtifactRules(tag_upscaled_above=1.2)})
    assert used.sha256() != demo.sha256() and '"tag_upscaled_above":1.2' in used.canonical_json()
    image = demo.model_copy(update={"image": demo.image.model_copy(update={"effective_resolution": True})})
    assert image.sha256() != demo.sha256()
    assert Recipe(artifacts=ArtifactRules()).sha256() == Recipe().sha256()


def _source_folder(root: Path) -> tuple[Path, Path, dict[str, int]]:
    """A sample DB and a folder of four of its posts' files: a JPEG q30, a PNG re-saved from a
    JPEG q50, a 2x bicubic upscale (PNG) and a clean drawing (PNG); each post's md5/size/dims
    fixed to its file."""
    import hashlib
    import sqlite3

    from kohaku_data.sample.metadata import write_sample_db

    db = root / "danbooru.db"
    write_sample_db(db, 6, seed=1)
    art = [anime_picture(np.random.default_rng(20 + i), 640, 480, texture=True) for i in range(3)]
    once = Image.open(io.BytesIO(_bytes(art[1], "JPEG", quality=50))).convert("RGB")
    small = anime_picture(np.random.default_rng(30), 320, 240)
    files = {"low_jpeg": (_bytes(art[0], "JPEG", quality=30), "jpg"), "jpeg_png": (_bytes(once, "PNG"), "png"),
             "upscaled": (_bytes(small.resize((640, 480), Image.BICUBIC), "PNG"), "png"),
             "clean": (_bytes(art[2], "PNG"), "png")}
    src = root / "raw"
    src.mkdir()
    with sqlite3.connect(db) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM post ORDER BY id")]
        keys = dict(zip(files, ids))
        for kind, (data, ext) in files.items():
            conn.execute("UPDATE post SET md5=?, file_size=?, file_ext=?, image_width=?, image_height=? WHERE id=?",
                         (hashlib.md5(data).hexdigest(), len(data), ext, 640, 480, keys[kind]))
            (src / f"{keys[kind]}.{ext}").write_bytes(data)
    conn.close()
    return db, src, keys


ART_RECIPE = ('name = "art"\nversion = "1"\n[image]\nbucket = "demo-256"\n'
              "[artifacts]\nreject_jpeg_quality_below = 70\ntag_upscaled_above = 1.2\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path, dict[str, int]]:
    """(db, recipe file, dataset, kind -> key) of a real `kdata build` run as a subprocess."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("art_build")
    db, src, keys = _source_folder(root)
    recipe = root / "art.toml"
    recipe.write_text(ART_RECIPE)
    out = root / "out"
    cmd = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "build", "--src", str(src), "--out",
           str(out), "--db", str(db), "--recipe", str(recipe), "--workers", "1", "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return db, recipe, out, keys


def test_kdata_build_rejects_and_tags_by_the_measures(built):
    import polars as pl

    _, _, out, keys = built
    rejects = {r["key"]: r for r in pl.read_parquet(out / "rejects.parquet").iter_rows(named=True)}
    assert rejects[keys["low_jpeg"]]["reason"] == "jpeg_quality"
    assert rejects[keys["low_jpeg"]]["detail"] == "JPEG quality 30 < 70"
    past = rejects[keys["jpeg_png"]]
    assert past["reason"] == "jpeg_quality" and past["detail"].startswith("past JPEG quality (history) ")
    assert abs(int(past["detail"].split()[4]) - 50) <= 3
    manifest = {r["key"]: r for r in pl.read_parquet(out / "manifest.parquet").iter_rows(named=True)}
    assert set(manifest) == {keys["upscaled"], keys["clean"]}
    up, clean = manifest[keys["upscaled"]], manifest[keys["clean"]]
    assert up["upscale_kind"] == "smooth" and up["upscale_factor"] >= 1.2 and up["artifact_tags"] == ["upscaled"]
    assert up["effective_width"] == round(640 / up["upscale_factor"]) and up["jpeg_quality"] is None
    assert clean["upscale_factor"] == 1.0 and clean["artifact_tags"] == [] and clean["jpeg_history"] < 0.3
    assert clean["source_format"] == "PNG" and clean["colours"] > 2
    assert set(FIELDS) <= set(manifest[keys["clean"]])
    assert _caption_text(out, keys["upscaled"]).endswith(", upscaled")
    assert "upscaled" not in _caption_text(out, keys["clean"])


def _caption_text(out: Path, key: int) -> str:
    import tarfile

    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name == f"{key}.txt":
                    return tar.extractfile(member).read().decode()
    raise AssertionError(f"no {key}.txt in the shards")


def test_recaption_applies_the_new_recipes_tag_rules(built, tmp_path):
    import polars as pl

    from kohaku_data.assembly import BuildError
    from kohaku_data.assembly.recaption import recaption_dataset
    from kohaku_data.config import load_recipe
    from kohaku_data.db import DanbooruDB

    db_path, recipe_path, out, keys = built
    recipe = load_recipe(recipe_path)
    untagged = recipe.model_copy(update={"version": "2", "artifacts": recipe.artifacts.model_copy(
        update={"tag_upscaled_above": None})})
    with DanbooruDB.open(db_path, readonly=True) as db:
        recaption_dataset(out, untagged, db, out=tmp_path / "recap")
        recaption_dataset(tmp_path / "recap", recipe, db, out=tmp_path / "again")  # tagged again
        stricter = recipe.model_copy(update={"version": "3", "artifacts": recipe.artifacts.model_copy(
            update={"reject_upscaled_above": 1.2})})
        with pytest.raises(BuildError, match="artifacts"):
            recaption_dataset(out, stricter, db, out=tmp_path / "refused")
    manifest = {r["key"]: r for r in pl.read_parquet(tmp_path / "recap" / "manifest.parquet").iter_rows(named=True)}
    assert manifest[keys["upscaled"]]["artifact_tags"] == []
    assert "upscaled" not in _caption_text(tmp_path / "recap", keys["upscaled"])
    assert manifest[keys["upscaled"]]["upscale_factor"] >= 1.2  # the measures are carried over
    assert _caption_text(tmp_path / "again", keys["upscaled"]) == _caption_text(out, keys["upscaled"])


def test_the_card_shows_the_measures_and_the_rules(built):
    _, _, out, _ = built
    body = (out / "README.md").read_text()
    section = body[body.index("\n## Source artifacts"):]
    assert "rejected: `jpeg_quality` 2; added caption tags: `upscaled` 1." in section
    assert "| upscaled (factor ≥ 1.05) | 1 | 50.0% of 2 |" in section
    assert "| JPEG sources | 0 | 0.0% of 2 |" in section and "No JPEG source." in section
    assert "![Source artifacts](card/artifacts.png)" in body
    with Image.open(out / "card" / "artifacts.png") as im:
        assert im.format == "PNG" and im.width >= 800
        assert sum(1 for n in im.convert("L").histogram() if n) > 10
