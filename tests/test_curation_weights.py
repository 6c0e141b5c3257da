"""Repeat-factor weights (LVIS) against a plain per-sample reference, and through a real build."""

from __future__ import annotations

import json
import math
import random
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl

from kohaku_data.curation.weights import repeat_factor_weights


def _reference(samples: dict[int, set[int]], threshold: float) -> dict[int, float]:
    n = len(samples)
    freq: dict[int, int] = {}
    for tags in samples.values():
        for t in tags:
            freq[t] = freq.get(t, 0) + 1
    factor = {t: max(1.0, math.sqrt(threshold / (c / n))) for t, c in freq.items()}
    return {k: max([factor[t] for t in tags], default=1.0) for k, tags in samples.items()}


def test_weights_match_reference() -> None:
    rng = random.Random(0)
    for threshold in (0.001, 0.05, 0.5, 1.0):
        samples = {k: {int(rng.paretovariate(1.2)) for _ in range(rng.randrange(0, 6))}
                   for k in rng.sample(range(1, 10_000), 500)}
        keys = np.array(sorted(samples), dtype=np.int64)
        pairs = sorted((k, t) for k, tags in samples.items() for t in tags)
        post, tag = (np.array(x, dtype=np.int64) for x in zip(*pairs))
        weights, _, _ = repeat_factor_weights(keys, post, tag, threshold)
        want = _reference(samples, threshold)
        assert np.allclose(weights, [want[k] for k in keys], rtol=0, atol=1e-12)


def test_build_writes_weight_column_and_stats(tmp_path: Path) -> None:
    from test_build_support import build, make_inputs, small_recipe

    inputs = make_inputs(tmp_path, n_posts=16)
    build(inputs, tmp_path / "plain")
    plain = pl.read_parquet(tmp_path / "plain" / "manifest.parquet")
    assert plain["weight"].dtype == pl.Float64 and (plain["weight"] == 1.0).all()
    assert "weights" not in json.loads((tmp_path / "plain" / "stats.json").read_text())
    with sqlite3.connect(inputs.db) as conn:  # characters of known frequency: on 6, 2, 1 and 0 samples
        conn.execute("DELETE FROM posttagrelation WHERE tag_id IN (SELECT id FROM tag WHERE type = 2)")
        ok = [k for k in inputs.ids if k not in inputs.hard.values()]  # the posts that become samples
        for name, posts in (("char_a", ok[:6]), ("char_b", ok[6:8]), ("char_c", ok[8:9])):
            tid = conn.execute("INSERT INTO tag (name, type, popularity) VALUES (?, 2, ?)", (name, len(posts))).lastrowid
            conn.executemany("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)", [(k, tid) for k in posts])
    recipe = small_recipe(weights={"categories": ["character"], "threshold": 0.3})
    build(inputs, tmp_path / "w", recipe)
    manifest = pl.read_parquet(tmp_path / "w" / "manifest.parquet")

    def samples(types: str) -> dict[int, set[int]]:
        with sqlite3.connect(inputs.db) as conn:
            return {k: {t for (t,) in conn.execute(
                "SELECT r.tag_id FROM posttagrelation r JOIN tag g ON g.id = r.tag_id "
                f"WHERE r.post_id = ? AND g.type IN ({types})", (k,))} for k in manifest["key"]}

    got = manifest["weight"].to_numpy()
    want = _reference(samples("2"), 0.3)
    assert np.allclose(got, [want[k] for k in manifest["key"]], rtol=0, atol=1e-12)
    assert len(set(got.round(9))) > 2  # the weights tell samples apart
    other = _reference(samples("1, 3"), 0.3)  # other categories give other weights
    assert not np.allclose(got, [other[k] for k in manifest["key"]])
    stats = json.loads((tmp_path / "w" / "stats.json").read_text())["weights"]
    assert stats["samples_repeated"] == int((manifest["weight"] > 1).sum())
    assert math.isclose(stats["epoch_size"], float(manifest["weight"].sum()), abs_tol=1e-3)
