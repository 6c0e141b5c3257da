"""Vectorised captions vs the plain per-post reference, on random real sqlite files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku_data.captions import Thresholds, caption_posts, caption_stats, compute_thresholds, iter_captions
from kohaku_data.captions.reference import reference_captions, reference_thresholds
from kohaku_data.config import CaptionConfig
from kohaku_data.db import DanbooruDB

COUNT = ["1girl", "2girls", "6+girls", "multiple_girls", "1boy", "3boys", "multiple_boys", "male_focus",
         "1other", "6+others"]
GENERAL = ["long_hair", "smile", "^_^", ":d", "o_o", "open_mouth", "blue_(color)_eyes", "a_b", "x"]
ARTIST = ["kei_(keigarou)", "banned_artist", "someone_(banned)", "abc_def", "zz"]
CHARACTER = ["hatsune_miku", "rem_(re:zero)", "c.c."]
COPYRIGHT = ["vocaloid", "re:zero_kara_hajimeru_isekai_seikatsu", "fate/grand_order"]
META = ["highres", "commentary_request", "photoshop_(medium)", "bad_id", "absurdres", "animated", "1:1_aspect"]
GOOD_DATES = ["2005-07-01T10:00:00.000-04:00", "2010-12-31T23:59:59.000-05:00", "2011-01-01T00:00:00.000+09:00",
              "2014-06-15T12:00:00Z", "2017-03-03T03:03:03.000-04:00", "2018-01-01T00:00:00.000-04:00",
              "2020-12-31T12:00:00.000-04:00", "2021-01-01T00:00:00.000-04:00", "2023-03-17T03:50:48.762-04:00",
              "2019-02-03", "2016-05-05 10:00:00"]
BAD_DATES = ["", "garbage", "2019-02-30T10:00:00.000-04:00", "1999-05-05T10:00:00.000-04:00",
             "2019-2-3T10:00:00", "2019-02-03X", "19-02-03T10:00:00", "2019-13-01T00:00:00"]


def make_db(path: Path, seed: int, posts: int = 300) -> DanbooruDB:
    """A random DB: tags of every type (count tags, banned artists, non-visual meta, short names,
    parens, a blank name), popularity ties, good and broken dates, metric ties."""
    rng = random.Random(seed)
    db = DanbooruDB.create(path)
    conn = db.connection()
    names = [(n, 0) for n in COUNT + GENERAL] + [(n, 1) for n in ARTIST] + [(n, 2) for n in CHARACTER]
    names += [(n, 3) for n in COPYRIGHT] + [(n, 4) for n in META] + [(" ", 0)]
    names += [(f"tag_{i}", rng.randrange(5)) for i in range(40)]
    tag_ids = rng.sample(range(1, 10_000), len(names))
    conn.executemany("INSERT INTO tag VALUES (?,?,?,?)",
                     [(tid, n, t, rng.choice([0, 5, 5, 10, rng.randrange(1000)])) for tid, (n, t) in zip(tag_ids, names)])
    post_ids = rng.sample(range(1, 100_000), posts)
    rows, rels = [], []
    for pid in post_ids:
        created = rng.choice(BAD_DATES) if rng.random() < 0.1 else rng.choice(GOOD_DATES)
        fav = rng.choice([0, 1, 2, 5, 10, 10, 20, rng.randrange(300)])
        rows.append((pid, created, 1, "", "0" * 32, None, 0, 0, 0, None, 0, 0, 1, 0, rng.randrange(100, 3000),
                     rng.randrange(100, 3000), 1000, rng.choice(["png", "jpg"]), rng.randrange(4),
                     rng.randrange(-5, 200), 0, 0, fav, None, None, None, created))
        for tid in rng.sample(tag_ids, rng.randrange(0, 25)):
            rels.append((pid, tid))
    rng.shuffle(rels)  # relation ids not in post order, so "db" order is its own order
    conn.executemany(f"INSERT INTO post VALUES ({','.join('?' * 27)})", rows)
    conn.executemany("INSERT INTO posttagrelation(post_id, tag_id) VALUES (?,?)", rels)
    conn.commit()
    return db


@pytest.fixture(scope="module", params=[0, 1, 2])
def rand_db(request, tmp_path_factory) -> DanbooruDB:
    db = make_db(tmp_path_factory.mktemp(f"caption{request.param}") / "danbooru.db", request.param)
    yield db
    db.close()


CONFIGS = [
    CaptionConfig(),
    CaptionConfig(tag_order="db", keep_separator=None),
    CaptionConfig(tag_order="alpha", escape_parens=True, underscore_to_space=False),
    CaptionConfig(tag_order="shuffle", shuffle_seed=7, blacklist=("smile", "long hair", "vocaloid")),
    CaptionConfig(tag_order="shuffle", shuffle_seed=-3, separator=",", keep_separator="###"),
    CaptionConfig(quality_metric="score", quality_cohort="rating_year", cohort_min_posts=8),
    CaptionConfig(quality_cutoff_date="2018-06-30", year_mode="percentile", rating=False),
    CaptionConfig(quality=False, year=False, drop_meta_containing=(), drop_artist_containing=()),
    # nothing after the keep separator for posts without general/meta tags: it ends the caption
    CaptionConfig(quality=False, year=False, rating=False, keep_separator="<keep>"),
    CaptionConfig(quality_percentiles=(90, 10), quality_bands=("top", "mid", "bottom"), year_min=2011,
                  year_bins=(2020, 2016, 2013, 2012)),
]


def _engine_rows(db: DanbooruDB, config: CaptionConfig, th: Thresholds, ids=None) -> list[dict]:
    frames = list(iter_captions(db, config, th, ids=ids, chunk_size=37))
    return pl.concat(frames).to_dicts() if frames else []


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_captions_match_reference(rand_db: DanbooruDB, config: CaptionConfig) -> None:
    th = compute_thresholds(rand_db, config)
    ids = [r[0] for r in rand_db.connection().execute("SELECT id FROM post")]
    expected = reference_captions(rand_db, ids, config, th)
    got = _engine_rows(rand_db, config, th)
    assert len(got) == len(expected) == len(ids)
    for g, e in zip(got, expected):
        assert g == e, f"post {e['id']}"


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_thresholds_match_numpy(rand_db: DanbooruDB, config: CaptionConfig) -> None:
    got, expected = compute_thresholds(rand_db, config), reference_thresholds(rand_db, config)
    assert got.year_edges == expected.year_edges
    assert got.by_rating.keys() == expected.by_rating.keys()
    assert got.by_cohort.keys() == expected.by_cohort.keys()
    for key in expected.by_rating:
        np.testing.assert_allclose(got.by_rating[key], expected.by_rating[key], rtol=0, atol=1e-9)
    for key in expected.by_cohort:
        np.testing.assert_allclose(got.by_cohort[key], expected.by_cohort[key], rtol=0, atol=1e-9)
    assert dict(got.counts) == dict(expected.counts)


def test_thresholds_direct_numpy(tmp_path: Path) -> None:
    """Thresholds equal np.percentile(..., method='linear') of each rating's fav_count."""
    db = make_db(tmp_path / "d.db", seed=11, posts=400)
    rows = np.array(db.connection().execute("SELECT rating, fav_count FROM post").fetchall())
    th = compute_thresholds(db, CaptionConfig())
    for r, name in enumerate(("general", "sensitive", "questionable", "explicit")):
        values = rows[rows[:, 0] == r, 1]
        expected = [np.percentile(values, p, method="linear") for p in (95, 85, 75, 50, 25, 10)]
        np.testing.assert_allclose(th.by_rating[name], expected, rtol=0, atol=1e-9)
    db.close()


def _single_rating_db(path: Path, favs: list[int], dates: list[str]) -> DanbooruDB:
    db = DanbooruDB.create(path)
    rows = [(i + 1, d, 1, "", "0" * 32, None, 0, 0, 0, None, 0, 0, 1, 0, 10, 10, 1, "png", 0, f, 0, 0, f,
             None, None, None, d) for i, (f, d) in enumerate(zip(favs, dates))]
    db.connection().executemany(f"INSERT INTO post VALUES ({','.join('?' * 27)})", rows)
    db.connection().commit()
    return db


def test_strictly_above_and_ties(tmp_path: Path) -> None:
    # 0..10: the 50th percentile is 5.0 exactly: fav 5 is NOT above it.
    db = _single_rating_db(tmp_path / "d.db", list(range(11)), ["2020-01-01T00:00:00Z"] * 11)
    config = CaptionConfig(quality_percentiles=(50,), quality_bands=("good", "bad"))
    th = compute_thresholds(db, config)
    assert th.by_rating["general"] == (5.0,)
    got = dict(caption_posts(db, list(range(1, 12)), config, th).select("fav_count", "quality").iter_rows())
    assert got[5] == "bad" and got[6] == "good" and got[0] == "bad"
    db.close()


def test_cohort_fallback_and_cutoff(tmp_path: Path) -> None:
    dates = ["2010-05-05T00:00:00Z"] * 20 + ["2022-05-05T00:00:00Z"] * 3 + ["garbage"]
    favs = list(range(100, 120)) + [0, 1, 2] + [50]
    db = _single_rating_db(tmp_path / "d.db", favs, dates)
    config = CaptionConfig(quality_cohort="rating_year", cohort_min_posts=10)
    th = compute_thresholds(db, config)
    assert set(th.by_cohort) == {"general:2010"}  # 2022 has 3 posts: falls back to the rating's
    frame = caption_posts(db, range(1, 25), config, th)
    q = dict(frame.select("id", "quality").iter_rows())
    assert q[20] == "masterpiece" and q[1] == "worst quality"  # judged within 2010
    assert q[21] == "worst quality"  # 2022 judged against all general posts
    assert frame.filter(pl.col("id") == 24)["year_tag"][0] is None  # broken date: no year tag
    cut = CaptionConfig(quality_cutoff_date="2015-01-01")
    th_cut = compute_thresholds(db, cut)
    assert th_cut.counts["general"] == 20  # newer and broken-date posts are not counted
    q = dict(caption_posts(db, range(1, 25), cut, th_cut).select("id", "quality").iter_rows())
    assert q[21] is None and q[24] is None and q[20] == "masterpiece"
    db.close()


def test_year_bins_and_example_layout(tmp_path: Path) -> None:
    db = DanbooruDB.create(tmp_path / "d.db")
    conn = db.connection()
    conn.executemany("INSERT INTO tag VALUES (?,?,?,?)", [
        (1, "1girl", 0, 100), (2, "long_hair", 0, 90), (3, "hatsune_miku", 2, 50), (4, "vocaloid", 3, 60),
        (5, "kei_(keigarou)", 1, 5), (6, "highres", 4, 80), (7, "commentary_request", 4, 70), (8, "^_^", 0, 1),
        (9, "bad_artist_(banned)", 1, 3),
    ])
    dates = ["2010-12-31T23:00:00-05:00", "2011-01-01T00:00:00+09:00", "2021-06-01T00:00:00Z", ""]
    for pid, d in enumerate(dates, 1):
        conn.execute(f"INSERT INTO post VALUES ({','.join('?' * 27)})",
                     (pid, d, 1, "", "0" * 32, None, 0, 0, 0, None, 0, 0, 1, 0, 1, 1, 1, "png", 3, 0, 0, 0, pid,
                      None, None, None, d))
    conn.executemany("INSERT INTO posttagrelation(post_id, tag_id) VALUES (?,?)",
                     [(1, t) for t in (2, 1, 3, 4, 5, 6, 7, 8, 9)])
    conn.commit()
    config = CaptionConfig(quality=False)
    frame = caption_posts(db, [1, 2, 3, 4], config, compute_thresholds(db, config))
    assert frame["year_tag"].to_list() == ["old", "early", "newest", None]
    assert frame["caption"][0] == (
        "1girl, hatsune miku, vocaloid, kei (keigarou), |||long hair, ^_^, highres, old, explicit, nsfw"
    )
    assert frame["caption"][3] == "|||explicit, nsfw"
    assert frame["tags_artist"].to_list()[0] == ["kei_(keigarou)", "bad_artist_(banned)"]
    db.close()


def test_thresholds_roundtrip_and_stats(rand_db: DanbooruDB) -> None:
    import json

    config = CaptionConfig(quality_cohort="rating_year", cohort_min_posts=5)
    th = compute_thresholds(rand_db, config)
    again = Thresholds.from_dict(json.loads(json.dumps(th.to_dict())))
    assert again == th
    stats = caption_stats(rand_db, config, th)
    assert sum(v["posts"] for v in stats["quality"].values()) == stats["posts"]
    assert abs(sum(v["share"] for v in stats["year"].values()) - 1) < 1e-9
    # shares agree with the captions themselves
    frame = pl.concat(list(iter_captions(rand_db, config, th)))
    assert stats["quality"]["masterpiece"]["posts"] == frame.filter(pl.col("quality") == "masterpiece").height


def test_missing_ids_and_empty(rand_db: DanbooruDB) -> None:
    config = CaptionConfig()
    th = compute_thresholds(rand_db, config)
    assert caption_posts(rand_db, [], config, th).height == 0
    assert caption_posts(rand_db, [-1, 10**9], config, th).columns[:2] == ["id", "caption"]
    some = [r[0] for r in rand_db.connection().execute("SELECT id FROM post LIMIT 5")]
    frame = caption_posts(rand_db, some + [10**9] + some, config, th)
    assert frame["id"].to_list() == sorted(some)


def test_two_dbs_in_one_process(tmp_path: Path) -> None:
    a, b = make_db(tmp_path / "a.db", 5, 50), make_db(tmp_path / "b.db", 6, 50)
    config = CaptionConfig()
    ta, tb = compute_thresholds(a, config), compute_thresholds(b, config)
    ids_a = [r[0] for r in a.connection().execute("SELECT id FROM post")]
    got = caption_posts(a, ids_a, config, ta)["caption"].to_list()
    caption_posts(b, [1], config, tb)
    assert got == [r["caption"] for r in reference_captions(a, ids_a, config, ta)]
    a.close(), b.close()


def test_readonly_db(tmp_path: Path) -> None:
    make_db(tmp_path / "r.db", 3, 40).close()
    before = (tmp_path / "r.db").read_bytes()
    with DanbooruDB.open(tmp_path / "r.db", readonly=True) as db:
        config = CaptionConfig()
        th = compute_thresholds(db, config)
        assert sum(f.height for f in iter_captions(db, config, th)) == 40
    assert (tmp_path / "r.db").read_bytes() == before  # the reader changed nothing


def test_worker_processes_match_one_process(tmp_path: Path) -> None:
    """Chunks captioned in 2 spawned worker processes: same frames, same order, as in-process."""
    db = make_db(tmp_path / "w.db", seed=21, posts=200)
    config = CaptionConfig(tag_order="db")
    th = compute_thresholds(db, config)
    single = pl.concat(list(iter_captions(db, config, th, chunk_size=30)))
    pooled = list(iter_captions(db, config, th, chunk_size=30, workers=2))
    assert len(pooled) == 7
    assert pl.concat(pooled).equals(single)
    ids = [r[0] for r in db.connection().execute("SELECT id FROM post")][::3]
    by_ids = pl.concat(list(iter_captions(db, config, th, ids=ids, chunk_size=20, workers=2)))
    assert by_ids["id"].to_list() == sorted(ids)
    assert by_ids.to_dicts() == reference_captions(db, ids, config, th)
    db.close()


def test_sparse_ids_and_orphan_relations(tmp_path: Path) -> None:
    """Post ids far apart (the search path of the id lookup, not the dense table), relations
    of posts and tags that do not exist, and the covering index of migration 0004."""
    db = DanbooruDB.create(tmp_path / "s.db")
    conn = db.connection()
    conn.executemany("INSERT INTO tag VALUES (?,?,?,?)", [(1, "1girl", 0, 9), (10**12, "smile", 0, 5)])
    post_ids = [5, 10**6, 10**12]
    for pid in post_ids:
        conn.execute(f"INSERT INTO post VALUES ({','.join('?' * 27)})",
                     (pid, "2020-01-01T00:00:00Z", 1, "", "0" * 32, None, 0, 0, 0, None, 0, 0, 1, 0, 1, 1, 1,
                      "png", 0, 0, 0, 0, 1, None, None, None, "2020-01-01T00:00:00Z"))
    rels = [(5, 1), (5, 10**12), (5, 777), (6, 1), (10**6, 10**12), (10**12, 1), (10**12 + 1, 1)]
    conn.executemany("INSERT INTO posttagrelation(post_id, tag_id) VALUES (?,?)", rels)
    conn.commit()
    config = CaptionConfig(quality=False)
    th = compute_thresholds(db, config)
    expected = reference_captions(db, post_ids, config, th)
    # post 5: tags 1 and 10**12 (777 does not exist); relations of posts 6 and 10**12 + 1 are orphans
    assert [r["tags_general"] for r in expected] == [["1girl", "smile"], ["smile"], ["1girl"]]
    for _ in range(2):
        assert pl.concat(list(iter_captions(db, config, th, chunk_size=2))).to_dicts() == expected
        assert caption_posts(db, post_ids, config, th).to_dicts() == expected
        conn.execute('DROP INDEX "posttagrelation_post_id"')  # as migration 0004 redefines it
        conn.execute('CREATE INDEX "posttagrelation_post_id" ON posttagrelation ("post_id", "tag_id")')
    db.close()


def test_negative_tag_ids_read_unpacked(tmp_path: Path) -> None:
    """Relations are read as one packed number (post offset << tag bits | tag id) only when
    every tag id is a non-negative integer; a negative one takes the two-column read."""
    from kohaku_data.db.post_tags import tag_bits

    db = make_db(tmp_path / "n.db", seed=5, posts=40)
    conn = db.connection()
    conn.execute("INSERT INTO tag VALUES (-7, 'negative_id', 0, 3)")
    some_posts = [r[0] for r in conn.execute("SELECT id FROM post ORDER BY id LIMIT 5")]
    conn.executemany("INSERT INTO posttagrelation(post_id, tag_id) VALUES (?, -7)", [(p,) for p in some_posts])
    conn.commit()
    assert tag_bits(conn) is None
    config = CaptionConfig()
    th = compute_thresholds(db, config)
    got = pl.concat(list(iter_captions(db, config, th, chunk_size=7))).to_dicts()
    expected = reference_captions(db, [r[0] for r in conn.execute("SELECT id FROM post")], config, th)
    assert got == expected
    assert sum("negative_id" in r["tags_general"] for r in got) == 5
    db.close()


def test_index_of_dense_and_sparse() -> None:
    from kohaku_data.captions.frame import index_of

    rng = np.random.default_rng(0)
    for keys in (np.arange(10, 5000, 3), np.unique(rng.integers(-10**15, 10**15, 3000))):
        queries = np.concatenate([keys, rng.choice(keys, 500), rng.integers(keys[0] - 50, keys[-1] + 50, 500)])
        found, pos = index_of(keys, queries)
        where = {int(k): i for i, k in enumerate(keys)}
        assert found.tolist() == [int(q) in where for q in queries]
        assert pos[found].tolist() == [where[int(q)] for q in queries[found]]


def test_text_columns_holding_the_column_separator_are_a_clear_error(tmp_path):
    """Posts come back as one string per column; a stray separator must not misalign rows."""
    import sqlite3

    from kohaku_data.captions import compute_thresholds, iter_captions
    from kohaku_data.captions.frame import CaptionReadError
    from kohaku_data.config import CaptionConfig
    from kohaku_data.db import DanbooruDB

    db = DanbooruDB.create(tmp_path / "d.db")
    db.close()
    with sqlite3.connect(tmp_path / "d.db") as conn:
        for pid, created in ((1, "2020-01-01T00:00:00.000-05:00"), (2, "2021-01-01T00:00\x1f:00.000-05:00")):
            conn.execute(
                "INSERT INTO post VALUES (?,?,1,'',NULL,NULL,0,0,0,NULL,0,0,0,0,10,10,1,'png',0,1,1,0,1,NULL,NULL,NULL,?)",
                (pid, created, created))
    conn.close()
    with DanbooruDB.open(tmp_path / "d.db", readonly=True) as ro:
        config = CaptionConfig()
        thresholds = compute_thresholds(ro, config)
        with pytest.raises(CaptionReadError, match="repair the DB"):
            list(iter_captions(ro, config, thresholds))
