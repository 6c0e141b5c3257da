"""`kdata sample`: deterministic, realistic sample DBs and raw images with hard cases."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from kohaku_data.cli import app
from kohaku_data.db import DanbooruDB, TagType
from kohaku_data.sample import (
    HARD_CASES, SampleError, read_hard_cases, write_sample_db, write_sample_images,
)
from kohaku_data.sample.images import render_post
from kohaku_data.sample.layout import tar_name


def _rows(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY id').fetchall()
                for t in ("post", "tag", "posttagrelation")}


def _schema(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "danbooru.db"
    write_sample_db(path, 4000, seed=11)
    return path


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """45 posts, images for all of them (every hard case), folder layout."""
    out = tmp_path_factory.mktemp("sample")
    write_sample_db(out / "danbooru.db", 45, seed=5)
    write_sample_images(out, out / "danbooru.db", seed=5, workers=2)
    return out


# -- metadata ----------------------------------------------------------------------------------
def test_db_is_deterministic_per_seed(tmp_path: Path) -> None:
    write_sample_db(tmp_path / "a.db", 300, seed=3)
    write_sample_db(tmp_path / "b.db", 300, seed=3)
    write_sample_db(tmp_path / "c.db", 300, seed=4)
    a, b, c = (_rows(tmp_path / f"{x}.db") for x in "abc")
    assert a == b
    assert a["post"] != c["post"] and a["posttagrelation"] != c["posttagrelation"]


def test_schema_is_exactly_the_published_one(tmp_path: Path, big_db: Path) -> None:
    DanbooruDB.create(tmp_path / "ref.db").close()
    assert _schema(big_db) == _schema(tmp_path / "ref.db")


def test_popularity_equals_relation_counts(big_db: Path) -> None:
    with sqlite3.connect(big_db) as conn:
        mismatched = conn.execute(
            'SELECT count(*) FROM "tag" t LEFT JOIN (SELECT tag_id, count(*) AS n FROM "posttagrelation" '
            "GROUP BY tag_id) r ON r.tag_id = t.id WHERE t.popularity != coalesce(r.n, 0)"
        ).fetchone()[0]
        dangling = conn.execute(
            'SELECT count(*) FROM "posttagrelation" r LEFT JOIN "tag" t ON t.id = r.tag_id '
            'LEFT JOIN "post" p ON p.id = r.post_id WHERE t.id IS NULL OR p.id IS NULL'
        ).fetchone()[0]
        dupes = conn.execute(
            'SELECT count(*) FROM (SELECT 1 FROM "posttagrelation" GROUP BY post_id, tag_id HAVING count(*) > 1)'
        ).fetchone()[0]
    assert (mismatched, dangling, dupes) == (0, 0, 0)


def test_tag_and_rating_mix_is_realistic(big_db: Path) -> None:
    with sqlite3.connect(big_db) as conn:
        n = conn.execute('SELECT count(*) FROM "post"').fetchone()[0]
        ratings = dict(conn.execute('SELECT rating, count(*) FROM "post" GROUP BY rating').fetchall())
        per_type = dict(conn.execute(
            'SELECT t.type, count(*) FROM "posttagrelation" r JOIN "tag" t ON t.id = r.tag_id GROUP BY t.type'
        ).fetchall())
        pop = dict(conn.execute('SELECT name, popularity FROM "tag"').fetchall())
        no_artist = conn.execute(
            'SELECT count(*) FROM "post" p WHERE NOT EXISTS (SELECT 1 FROM "posttagrelation" r '
            'JOIN "tag" t ON t.id = r.tag_id WHERE r.post_id = p.id AND t.type = ?)', (int(TagType.ARTIST),)
        ).fetchone()[0]
        girls_and_solo = conn.execute(
            'SELECT count(*) FROM "posttagrelation" a JOIN "posttagrelation" b ON a.post_id = b.post_id '
            'WHERE a.tag_id = (SELECT id FROM "tag" WHERE name = \'2girls\') '
            'AND b.tag_id = (SELECT id FROM "tag" WHERE name = \'solo\')'
        ).fetchone()[0]
    for rating, share in enumerate((0.35, 0.30, 0.15, 0.20)):
        assert abs(ratings[rating] / n - share) < 0.04
    assert 20 <= sum(per_type.values()) / n <= 30  # Danbooru: ~25 tags a post
    assert 1.0 <= per_type[TagType.ARTIST] / n <= 1.2
    assert 0.6 <= per_type[TagType.CHARACTER] / n <= 1.3
    assert 0.7 <= per_type[TagType.COPYRIGHT] / n <= 1.2
    assert 14 <= per_type[TagType.GENERAL] / n <= 25
    assert 0.55 <= pop["1girl"] / n <= 0.65 and 0.45 <= pop["solo"] / n <= 0.55
    assert pop["1girl"] > pop["long_hair"] > pop["short_hair"]
    assert no_artist == 0 and girls_and_solo == 0


def test_post_columns_are_plausible(big_db: Path) -> None:
    with sqlite3.connect(big_db) as conn:
        rows = conn.execute(
            'SELECT id, created_at, updated_at, md5, file_ext, image_width, image_height, score, '
            'fav_count, file_size FROM "post" ORDER BY id').fetchall()
    ids, created, updated, md5, ext, w, h, score, fav, size = map(list, zip(*rows))
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
    assert all(iso.match(c) and iso.match(u) for c, u in zip(created, updated))
    utc = np.array([np.datetime64(c[:23]) - np.timedelta64(int(c[23:26]), "h") for c in created])
    utc_updated = np.array([np.datetime64(u[:23]) - np.timedelta64(int(u[23:26]), "h") for u in updated])
    assert (np.diff(utc.astype("datetime64[ms]").astype(np.int64)) >= 0).all()  # ids follow time
    assert (utc_updated >= utc).all()
    years = np.array([int(c[:4]) for c in created])
    assert years.min() >= 2005 and years.max() <= 2024 and (years >= 2020).sum() > (years < 2015).sum()
    assert all(re.fullmatch(r"[0-9a-f]{32}", m) for m in md5) and len(set(md5)) == len(md5)
    shares = {e: ext.count(e) / len(ext) for e in set(ext)}
    assert 0.62 < shares["jpg"] < 0.78 and 0.18 < shares["png"] < 0.32
    ratio = np.array(w) / np.array(h)
    assert ratio.min() < 0.4 and ratio.max() > 2.5 and min(size) > 0
    score, fav = np.array(score), np.array(fav)
    assert (score < 0).any() and score.max() > 20 * np.median(score)
    assert np.corrcoef(score, fav)[0, 1] > 0.8


def test_refuses_to_overwrite_a_db_with_posts(tmp_path: Path) -> None:
    path = tmp_path / "danbooru.db"
    write_sample_db(path, 20, seed=1)
    before = path.read_bytes()
    with pytest.raises(SampleError, match="already exists"):
        write_sample_db(path, 20, seed=2)
    assert path.read_bytes() == before
    with pytest.raises(SampleError):
        write_sample_db(tmp_path / "x.db", 0)


def test_aliases_go_into_an_existing_alias_table(tmp_path: Path) -> None:
    path = tmp_path / "danbooru.db"
    with DanbooruDB.create(path) as db:  # as `kdata db init` + migrations would leave it
        db.TagAlias.create_table()
    write_sample_db(path, 200, seed=1)
    with sqlite3.connect(path) as conn:
        aliases = dict(conn.execute('SELECT alias, tag_name FROM "kdata_tag_alias"').fetchall())
        names = {r[0] for r in conn.execute('SELECT name FROM "tag"')}
    assert aliases.get("1girls") == "1girl"
    assert set(aliases.values()) <= names and not set(aliases) & names
    assert not any(a.startswith("/") for a in aliases)


# -- images ------------------------------------------------------------------------------------
def test_every_file_matches_its_post(sample_dir: Path) -> None:
    cases = read_hard_cases(sample_dir)
    broken = {c["post_id"] for c in cases.values() if not c["decodable"]}
    with sqlite3.connect(sample_dir / "danbooru.db") as conn:
        posts = {r[0]: r[1:] for r in conn.execute(
            'SELECT id, image_width, image_height, file_ext, file_size, md5 FROM "post"')}
    files = [p for p in (sample_dir / "raw").rglob("*") if p.is_file()]
    in_db = [p for p in files if int(p.stem) in posts]
    assert len(in_db) == len(posts) - 2  # two posts have no file
    for path in in_db:
        w, h, ext, size, md5 = posts[int(path.stem)]
        data = path.read_bytes()
        assert (path.suffix[1:], size, md5) == (ext, len(data), hashlib.md5(data).hexdigest())
        if int(path.stem) not in broken:
            with Image.open(path) as im:
                assert ImageOps.exif_transpose(im).size == (w, h), path


def test_hard_cases_are_really_hard(sample_dir: Path) -> None:
    cases = read_hard_cases(sample_dir)
    assert {c.name for c in HARD_CASES} <= set(cases)

    def open_case(name: str) -> Image.Image:
        return Image.open(sample_dir / cases[name]["path"])

    assert open_case("cmyk_jpeg").mode == "CMYK"
    assert open_case("grayscale_l").mode == "L" and open_case("grayscale_la").mode == "LA"
    rgba = np.asarray(open_case("rgba_soft_alpha"))[..., 3]
    assert rgba.min() == 0 and rgba.max() == 255 and ((rgba > 0) & (rgba < 255)).sum() > 100
    pal = open_case("palette_transparency")
    assert pal.mode == "P" and "transparency" in pal.info
    deep = open_case("png_16bit")
    assert deep.mode == "I;16" and len(np.unique(np.asarray(deep))) > 256
    rotated = open_case("exif_rotated")
    assert rotated.getexif()[0x0112] == 6 and rotated.size[::-1] == ImageOps.exif_transpose(rotated).size
    assert b"kdata synthetic Adobe RGB" in open_case("icc_adobe_rgb").info["icc_profile"]
    assert open_case("animated_gif").n_frames > 1
    assert open_case("tiny").size == (64, 64)
    assert open_case("bmp").format == "BMP" and open_case("tiff").format == "TIFF"
    assert open_case("avif").format == "AVIF" and open_case("webp_lossless").format == "WEBP"
    with pytest.raises(OSError):
        open_case("truncated").load()
    assert (sample_dir / cases["zero_bytes"]["path"]).stat().st_size == 0
    with pytest.raises(OSError):
        open_case("random_bytes")
    assert "path" not in cases["missing_file"] and "path" not in cases["missing_file_2"]
    assert cases["nested"]["path"].count("/") >= 3
    with sqlite3.connect(sample_dir / "danbooru.db") as conn:
        ids = {r[0] for r in conn.execute('SELECT id FROM "post"')}
    assert cases["orphan_file"]["post_id"] not in ids and (sample_dir / cases["orphan_file"]["path"]).is_file()
    assert cases["missing_file"]["post_id"] in ids


def test_images_are_deterministic_and_tar_layout(sample_dir: Path, tmp_path: Path) -> None:
    write_sample_db(tmp_path / "danbooru.db", 45, seed=5)
    write_sample_images(tmp_path, tmp_path / "danbooru.db", seed=5, layout="tar", workers=1)
    folder = {p.relative_to(sample_dir / "raw").as_posix(): p.read_bytes()
              for p in (sample_dir / "raw").rglob("*") if p.is_file()}
    members: dict[str, bytes] = {}
    for tar_path in sorted((tmp_path / "raw").iterdir()):
        assert re.fullmatch(r"data-\d{4}\.tar", tar_path.name)
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                assert tar_name(int(Path(m.name).stem)) == tar_path.name
                members[m.name] = tar.extractfile(m).read()
    assert members == folder  # same seed: byte-identical files, whichever layout and worker count
    assert _rows(tmp_path / "danbooru.db") == _rows(sample_dir / "danbooru.db")
    other = render_post(6, 100, None)
    assert other is not None and other.data != render_post(5, 100, None).data


def test_cli_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["sample", str(out), "--posts", "30", "--images", "3"])
    assert result.exit_code == 0, result.output
    assert (out / "danbooru.db").is_file() and len(list((out / "raw").glob("*.*"))) == 3 + 2
    again = runner.invoke(app, ["sample", str(out), "--posts", "30", "--no-images"])
    assert again.exit_code == 1 and "already exists" in again.output
    forced = runner.invoke(app, ["sample", str(out), "--posts", "40", "--no-images", "--force"])
    assert forced.exit_code == 0, forced.output
    with sqlite3.connect(out / "danbooru.db") as conn:
        assert conn.execute('SELECT count(*) FROM "post"').fetchone()[0] == 40


def test_image_update_keeps_tags_true_to_sizes(sample_dir: Path) -> None:
    with sqlite3.connect(sample_dir / "danbooru.db") as conn:
        wrong_popularity = conn.execute(
            'SELECT count(*) FROM "tag" t WHERE popularity != '
            '(SELECT count(*) FROM "posttagrelation" r WHERE r.tag_id = t.id)'
        ).fetchone()[0]
        rows = conn.execute(
            'SELECT p.image_width, p.image_height, EXISTS (SELECT 1 FROM "posttagrelation" r JOIN "tag" t '
            "ON t.id = r.tag_id WHERE r.post_id = p.id AND t.name = 'highres') FROM \"post\" p"
        ).fetchall()
    assert wrong_popularity == 0
    assert all(bool(tagged) == (w >= 1600 or h >= 1200) for w, h, tagged in rows)
    assert any(tagged for *_, tagged in rows) and not all(tagged for *_, tagged in rows)


def test_migrated_sample_resolves_real_aliases(tmp_path):
    """`kdata sample --migrate`: kdata tables, query indexes and the real aliases of used tags."""
    from kohaku_data.db import DanbooruDB
    from kohaku_data.db.migrate import current_version, pending
    from kohaku_data.db.query import query_ids
    from kohaku_data.sample import write_sample

    write_sample(tmp_path, posts=60, seed=2, images=0, migrate=True)
    with DanbooruDB.open(tmp_path / "danbooru.db", readonly=True) as db:
        assert current_version(db) > 0 and pending(db) == []
        aliases = dict(db.connection().execute("SELECT alias, tag_name FROM kdata_tag_alias"))
        assert aliases.get("1girls") == "1girl"  # a real alias from the bundled tag list
        used = {r[0] for r in db.connection().execute("SELECT name FROM tag")}
        assert set(aliases.values()) <= used
        assert query_ids(db, "1girls") == query_ids(db, "1girl") != []
