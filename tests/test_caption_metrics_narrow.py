"""The whole-DB frame of caption thresholds and stats is narrow (read_metrics: rating in its
narrowest integer type, the written date as a pl.Date, not created_at text) and the stats are
derived a slice at a time; the results are those of captions themselves and the same for any
chunk and slice size."""

from __future__ import annotations

import operator
from pathlib import Path

import polars as pl
import pytest

from kohaku_data.captions import iter_captions
from kohaku_data.captions import stats as stats_mod
from kohaku_data.captions.stats import stats_from_frame
from kohaku_data.captions.thresholds import (WRITTEN, compare_date, post_date, read_metrics,
                                             thresholds_from_frame, written_date)
from kohaku_data.config import CaptionConfig
from test_captions import BAD_DATES, GOOD_DATES, make_db

CONFIGS = [
    CaptionConfig(),
    CaptionConfig(quality_metric="score", quality_cohort="rating_year", cohort_min_posts=4),
    CaptionConfig(quality_cutoff_date="2018-06-30", year_mode="percentile", year_min=2011),
    CaptionConfig(quality=False, year_number=True, rating=False),
]
ODD_DATES = ["0000-01-01T00:00", "9999-12-31T", "２０２０-01-01T00:00", "2020-01-01", "2004-12-31 23:00"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    handle = make_db(tmp_path_factory.mktemp("narrow") / "danbooru.db", seed=5, posts=400)
    conn = handle.connection()
    conn.execute("UPDATE post SET rating = 300 WHERE id = (SELECT max(id) FROM post)")  # past int8
    conn.execute("UPDATE post SET rating = -1 WHERE id = (SELECT min(id) FROM post)")
    conn.commit()
    yield handle
    handle.close()


def test_read_metrics_is_narrow_and_the_same_in_any_chunks(db) -> None:
    whole = read_metrics(db, "fav_count")
    assert whole.schema == pl.Schema({"rating": pl.Int16, "metric": pl.Float64, WRITTEN: pl.Date})
    chunked = read_metrics(db, "fav_count", chunk=7)  # most chunks' ratings fit an int8
    assert chunked.equals(whole)
    assert read_metrics(db, "score").height == whole.height


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_stats_are_the_captions_counts_in_any_slices(db, config, monkeypatch) -> None:
    metrics = read_metrics(db, config.quality_metric)
    thresholds = thresholds_from_frame(metrics, config)
    assert thresholds_from_frame(read_metrics(db, config.quality_metric, chunk=11), config) == thresholds
    stats = stats_from_frame(metrics, config, thresholds)
    monkeypatch.setattr(stats_mod, "STATS_SLICE", 9)
    assert stats_from_frame(metrics, config, thresholds) == stats
    captions = pl.concat(list(iter_captions(db, config, thresholds, chunk_size=50)))
    for key, col in (("quality", "quality"), ("year", "year_tag"), ("rating", "rating")):
        counts = dict(captions.group_by(col).len().iter_rows())
        got = {name: v["posts"] for name, v in stats[key].items() if v["posts"]}
        assert got == {"(none)" if k is None else k: n for k, n in counts.items()}, key


@pytest.mark.parametrize("year_min", [2005, 2011, 1, 0, 2030, 10000])
def test_the_date_column_is_the_written_date(year_min) -> None:
    texts = pl.DataFrame({"created_at": GOOD_DATES + BAD_DATES + ODD_DATES})
    got = texts.select(post_date(texts.columns, year_min).dt.to_string("%Y-%m-%d"))["_date"]
    assert got.to_list() == texts.select(written_date(pl.col("created_at"), year_min))["created_at"].to_list()


@pytest.mark.parametrize("bound", ["2019-02-03", "2019-02-30", "2019-02", "2019-02-03T10", "0000-01-01", "zz", ""])
def test_dates_compare_with_any_bound_as_their_text(bound) -> None:
    texts = [t[:10] for t in GOOD_DATES if t[4:5] == "-"] + ["2019-02-02", "2019-02-04", "0001-01-01"]
    dates = pl.DataFrame({"t": texts}).select(pl.col("t"), d=pl.col("t").str.to_date("%Y-%m-%d"))
    for op in (operator.lt, operator.le, operator.ge):
        got = dates.select(compare_date(pl.col("d"), op, bound))["d"].to_list()
        assert got == [op(t, bound) for t in texts], (op, bound)
