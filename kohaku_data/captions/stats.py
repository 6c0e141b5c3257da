"""Caption stats of the whole DB: thresholds, and the share of posts per quality band, year tag
and rating, from one `read_metrics` frame.

Apart from the package's __init__ so that summaries.py (which stores these stats) builds on it
instead of importing the package that imports summaries.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from kohaku_data.captions.layout import post_columns
from kohaku_data.captions.thresholds import RATING_NAMES, Thresholds
from kohaku_data.config import CaptionConfig


def stats_from_frame(metrics: pl.DataFrame, config: CaptionConfig, thresholds: Thresholds) -> dict[str, Any]:
    """`caption_stats` from a `read_metrics` frame of the whole DB."""
    frame = post_columns(metrics.rename({"metric": thresholds.metric}), config, thresholds)
    total = frame.height

    def shares(col: str, names: Sequence[str]) -> dict[str, Any]:
        counts = dict(frame.group_by(col).len().iter_rows())
        out = {n: {"posts": int(counts.get(n, 0)), "share": counts.get(n, 0) / total if total else 0.0} for n in names}
        out["(none)"] = {"posts": int(counts.get(None, 0)), "share": counts.get(None, 0) / total if total else 0.0}
        return out

    return {
        "posts": total,
        "thresholds": thresholds.to_dict(),
        "quality": shares("quality", config.quality_bands),
        "year": shares("year_tag", config.year_tags),
        "rating": shares("rating", RATING_NAMES),
    }
