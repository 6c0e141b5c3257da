"""`kdata db attach`: per-post columns from parquet/CSV, rejects, percentile tags, text fields and
caption modes, through captions, a real build and re-captioning (image bytes untouched)."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from kohaku_data.captions import compute_thresholds, iter_captions
from kohaku_data.curation.captions import curated_thresholds
from kohaku_data.cli import app
from kohaku_data.config import AttachedTags, CaptionConfig
from kohaku_data.curation.attached import AttachError, attach_column
from kohaku_data.db import DanbooruDB
from test_captions import make_db


@pytest.fixture
def db(tmp_path: Path) -> DanbooruDB:
    handle = make_db(tmp_path / "danbooru.db", 3, posts=200)
    yield handle
    handle.close()


def _ids(db: DanbooruDB) -> list[int]:
    return [r[0] for r in db.connection().execute("SELECT id FROM post ORDER BY id")]


def test_attach_stores_values_and_records_rejects(db: DanbooruDB, tmp_path: Path) -> None:
    ids = _ids(db)
    path = tmp_path / "scores.csv"
    lines = ["id,aesthetic"] + [f"{i},{k / 10}" for k, i in enumerate(ids[:50])]
    lines += ["999999999,1.0", "abc,2.0", f"{ids[0]},3.0", f"{ids[60]},", f"{ids[61]},nan", f"{ids[62]},inf"]
    path.write_text("\n".join(lines) + "\n")
    result = attach_column(db, path, "aesthetic")
    assert (result.kind, result.posts) == ("numeric", 50)
    assert result.reasons == {"bad_id": 1, "bad_value": 3, "duplicate_id": 1, "unknown_post": 1}
    conn = db.connection()
    rows = conn.execute("SELECT row, post_id, reason FROM kdata_attached_reject ORDER BY row").fetchall()
    assert rows[:3] == [(51, "999999999", "unknown_post"), (52, "abc", "bad_id"), (53, str(ids[0]), "duplicate_id")]
    stored = conn.execute("SELECT post_id, num FROM kdata_attached_value WHERE name='aesthetic' ORDER BY post_id")
    assert [tuple(r) for r in stored] == [(i, k / 10) for k, i in enumerate(ids[:50])]
    # a rerun replaces the column (values and rejects)
    pl.DataFrame({"post_id": ids[:3], "aesthetic": [1.0, 2.0, 3.0]}).write_parquet(tmp_path / "s.parquet")
    again = attach_column(db, tmp_path / "s.parquet", "aesthetic")
    assert (again.posts, again.rejected) == (3, 0)
    assert conn.execute("SELECT count(*) FROM kdata_attached_value").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM kdata_attached_reject").fetchone()[0] == 0


def test_attach_errors_say_what_to_do(db: DanbooruDB, tmp_path: Path) -> None:
    path = tmp_path / "two.csv"
    path.write_text("id,a,b\n1,2,3\n")
    with pytest.raises(AttachError, match="--column"):
        attach_column(db, path, "x")
    (tmp_path / "noid.csv").write_text("pid,a\n1,2\n")
    with pytest.raises(AttachError, match="no id column"):
        attach_column(db, tmp_path / "noid.csv", "x")
    with pytest.raises(AttachError, match="--name"):
        attach_column(db, path, "bad name", "a")
    with pytest.raises(AttachError, match=r"\.parquet or \.csv"):
        attach_column(db, tmp_path / "missing.csv", "x")


def _reference_band(values: dict[int, float], ratings: dict[int, int], rule: AttachedTags) -> dict[int, str]:
    """Plain numpy: per rating, 'linear' percentiles; best band strictly above."""
    out = {}
    for pid, v in values.items():
        group = [values[p] for p in values if ratings[p] == ratings[pid]]
        limits = [float(np.percentile(group, p, method="linear")) for p in rule.percentiles]
        out[pid] = next((b for b, t in zip(rule.bands, limits) if v > t), rule.bands[-1])
    return out


def test_percentile_tags_text_fields_and_caption_modes(db: DanbooruDB, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = _ids(db)
    scored = ids[::2]
    values = {i: float(round(v, 1)) for i, v in zip(scored, rng.normal(5, 2, len(scored)))}
    pl.DataFrame({"id": list(values), "score": list(values.values())}).write_parquet(tmp_path / "a.parquet")
    attach_column(db, tmp_path / "a.parquet", "aes")
    texts = {i: f"a picture of post {i}" for i in ids[::3]}
    pl.DataFrame({"id": list(texts), "text": list(texts.values())}).write_csv(tmp_path / "t.csv")
    attach_column(db, tmp_path / "t.csv", "nl")
    # "": the middle band adds no tag (as in the default bands)
    rule = AttachedTags(column="aes", percentiles=(80, 50, 20), bands=("very aesthetic", "aesthetic", "", "bad"))
    ratings = dict(db.connection().execute("SELECT id, rating FROM post"))
    want_band = _reference_band(values, ratings, rule)
    base = CaptionConfig()
    plain = pl.concat(list(iter_captions(db, base, compute_thresholds(db, base)))).select("id", "caption")
    plain = dict(plain.iter_rows())
    for mode in ("tags", "text", "tags_then_text"):
        config = CaptionConfig(attached_tags=(rule,), text_fields=("nl",), caption_mode=mode, text_joiner=" | ")
        th = curated_thresholds(db, config)
        assert th.to_dict()["curation"]["attached_tags"]["aes"]["counts"]
        frame = pl.concat(list(iter_captions(db, config, th, chunk_size=33)))
        for row in frame.iter_rows(named=True):
            pid, band = row["id"], want_band.get(row["id"])
            assert row["attached_aes"] == band
            tag_caption = f"{plain[pid]}, {band}" if band else plain[pid]
            assert row["tag_caption"] == tag_caption
            assert row["text_nl"] == texts.get(pid)
            text = texts.get(pid)
            expected = {"tags": tag_caption, "text": text or tag_caption,
                        "tags_then_text": tag_caption if text is None else f"{tag_caption} | {text}"}[mode]
            assert row["caption"] == expected


def test_unknown_attached_column_is_a_clear_error(db: DanbooruDB) -> None:
    with pytest.raises(AttachError, match="kdata db attach"):
        curated_thresholds(db, CaptionConfig(text_fields=("nothing",)))


def test_cli_attach(db: DanbooruDB, tmp_path: Path) -> None:
    ids = _ids(db)
    pl.DataFrame({"id": ids[:5] + [123456789], "v": [1.0, 2, 3, 4, 5, 6]}).write_csv(tmp_path / "v.csv")
    result = CliRunner().invoke(app, ["db", "attach", str(tmp_path / "v.csv"), "--name", "v", "--db", str(db.path)])
    assert result.exit_code == 0, result.output
    assert "5 posts" in result.output and "unknown_post 1" in result.output
    result = CliRunner().invoke(app, ["db", "attach", str(tmp_path / "nope.csv"), "--name", "v", "--db", str(db.path)])
    assert result.exit_code == 1


def _members(out: Path) -> dict[str, bytes]:
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()})
    return found


def test_build_keeps_texts_apart_and_recaption_picks_up_new_data(tmp_path: Path) -> None:
    from kohaku_data.assembly.recaption import recaption_dataset
    from test_build_support import build, make_inputs, small_recipe

    inputs = make_inputs(tmp_path, n_posts=16)
    with DanbooruDB.open(inputs.db) as db:
        pl.DataFrame({"id": inputs.ids, "text": [f"first text {i}" for i in inputs.ids]}).write_parquet(tmp_path / "t.parquet")
        attach_column(db, tmp_path / "t.parquet", "nl")
    recipe = small_recipe(caption={"text_fields": ["nl"], "caption_mode": "tags_then_text", "text_joiner": "\n"})
    out = tmp_path / "ds"
    build(inputs, out, recipe)
    members = _members(out)
    first_sha = json.loads((out / "dataset.lock").read_text())["caption_thresholds"]["curation"]["attached_sources"]["nl"]
    samples = [json.loads(v) for k, v in members.items() if k.endswith(".json") and k.split(".")[0].isdigit()]
    assert samples
    for meta in samples:
        txt = members[f"{meta['id']}.txt"].decode()
        assert meta["text_fields"] == ["nl"] and meta["texts"] == [f"first text {meta['id']}"]
        assert txt == f"{meta['tag_caption']}\nfirst text {meta['id']}" == meta["caption"]
    # new attached data: re-captioning takes it, image members stay byte for byte
    with DanbooruDB.open(inputs.db) as db:
        pl.DataFrame({"id": inputs.ids, "text": [f"second {i}" for i in inputs.ids]}).write_parquet(tmp_path / "t.parquet")
        attach_column(db, tmp_path / "t.parquet", "nl")
    with DanbooruDB.open(inputs.db, readonly=True) as db:
        new = Path(recaption_dataset(out, recipe, db)["out"])
    again = _members(new)
    images = [n for n in members if n.endswith((".webp", ".png"))]
    assert images and all(members[n] == again[n] for n in images)
    for meta in samples:
        assert again[f"{meta['id']}.txt"].decode().endswith(f"\nsecond {meta['id']}")
    # and a rebuild of the same recipe is not "up to date": its captions would change
    rebuilt = build(inputs, out, recipe)
    assert not rebuilt.up_to_date and _members(out)[f"{samples[0]['id']}.txt"].decode().endswith("second " + str(samples[0]["id"]))
    lock = json.loads((new / "dataset.lock").read_text())
    assert lock["caption_thresholds"]["curation"]["attached_sources"]["nl"] == \
        json.loads((out / "dataset.lock").read_text())["caption_thresholds"]["curation"]["attached_sources"]["nl"] != first_sha


def _usable_year(created_at: str | None) -> int | None:
    """The year of a real calendar date written first in `created_at` (then nothing, "T" or " "),
    from year_min on."""
    text = created_at or ""
    try:
        day = date.fromisoformat(text[:10])
    except ValueError:
        return None
    if len(text) > 10 and text[10] not in "T ":
        return None
    return day.year if day.year >= CaptionConfig().year_min else None


def test_percentile_tags_per_rating_year_cohort(db: DanbooruDB, tmp_path: Path) -> None:
    """Cohorts of at least cohort_min_posts values get thresholds of their own; the others (and
    posts without a usable date) use their rating's: checked against plain numpy per group."""
    rng = np.random.default_rng(1)
    ids = _ids(db)
    years = {pid: _usable_year(text) for pid, text in db.connection().execute("SELECT id, created_at FROM post")}
    assert None in years.values()  # the fixture has broken dates: those posts use their rating's
    # Values drift with the year, so cohort thresholds differ from the rating's.
    values = {i: float(rng.normal((years[i] or 2000) - 2000, 2)) for i in ids}
    pl.DataFrame({"id": ids, "score": list(values.values())}).write_parquet(tmp_path / "a.parquet")
    attach_column(db, tmp_path / "a.parquet", "aes")
    ratings = dict(db.connection().execute("SELECT id, rating FROM post"))
    sizes = Counter((ratings[i], years[i]) for i in ids)
    minimum = sorted(sizes.values())[len(sizes) // 2]  # about half the cohorts stand alone
    rule = AttachedTags(column="aes", percentiles=(75, 25), bands=("top", "", "low"), cohort="rating_year",
                        cohort_min_posts=minimum)
    group = {i: (ratings[i], years[i]) if years[i] and sizes[(ratings[i], years[i])] >= minimum else (ratings[i], None)
             for i in ids}
    assert len(set(group.values())) > len({g[0] for g in group.values()})  # some cohorts stand alone
    want = {}
    for pid, v in values.items():
        members = [values[p] for p in ids if group[p] == group[pid]]
        limits = [float(np.percentile(members, p, method="linear")) for p in rule.percentiles]
        want[pid] = next((b for b, t in zip(rule.bands, limits) if v > t), rule.bands[-1])
    config = CaptionConfig(attached_tags=(rule,))
    frame = pl.concat(list(iter_captions(db, config, curated_thresholds(db, config), chunk_size=50)))
    assert dict(frame.select("id", "attached_aes").iter_rows()) == want


def test_cli_one_bad_value_keeps_a_numeric_column_numeric(db: DanbooruDB, tmp_path: Path) -> None:
    """A score file with a stray 'n/a' and a blank: the column stays numeric (guessed or asked for),
    the bad values are rejects with their reason and written form, and the report counts them."""
    from cli_support import run_kdata

    ids = _ids(db)
    lines = ["id,score"] + [f"{i},{k / 4}" for k, i in enumerate(ids[:20])] + [f"{ids[20]},n/a", f"{ids[21]}, ",
                                                                              f"{ids[22]},high"]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    for extra in ([], ["--kind", "numeric"]):
        done = run_kdata("db", "attach", tmp_path / "s.csv", "--name", "score", "--db", db.path, *extra)
        assert done.returncode == 0, done.stderr
        text = " ".join(done.stdout.split())
        assert "attached score (numeric): 20 posts; rejected 3 (bad_value 3)" in text, text
        assert "3 values are not numbers (e.g. 'n/a', ' ', 'high')" in text, text
        assert ("--kind text" in text) == (not extra), text
        conn = db.connection()
        assert conn.execute("SELECT kind, posts, rejected FROM kdata_attached_column WHERE name='score'").fetchone() \
            == ("numeric", 20, 3)
        rejects = conn.execute("SELECT row, post_id, reason, value FROM kdata_attached_reject ORDER BY row").fetchall()
        assert rejects == [(21, str(ids[20]), "bad_value", "n/a"), (22, str(ids[21]), "bad_value", " "),
                           (23, str(ids[22]), "bad_value", "high")]
    done = run_kdata("db", "attach", tmp_path / "s.csv", "--name", "score", "--db", db.path, "--kind", "text")
    assert done.returncode == 0 and "attached score (text): 22 posts; rejected 1 (bad_value 1)" in done.stdout
    texts = dict(db.connection().execute("SELECT post_id, txt FROM kdata_attached_value WHERE name='score'"))
    assert texts[ids[20]] == "n/a" and texts[ids[1]] == "0.25"


def test_mostly_text_stays_text(db: DanbooruDB, tmp_path: Path) -> None:
    ids = _ids(db)
    texts = ["a girl with a cat", "2024", "night sky over a city", "blue hair"]
    pl.DataFrame({"id": ids[:4], "nl": texts}).write_csv(tmp_path / "t.csv")
    result = attach_column(db, tmp_path / "t.csv", "nl")
    assert (result.kind, result.posts, result.rejected, result.guessed) == ("text", 4, 0, True)
    pl.DataFrame({"id": ids[:3], "v": [0.5, 1.5, 2.5]}).write_parquet(tmp_path / "n.parquet")
    as_text = attach_column(db, tmp_path / "n.parquet", "v", kind="text")  # numbers asked for as text
    assert (as_text.kind, as_text.posts) == ("text", 3)
