"""`db_info(db)`: counts and ranges of a Danbooru2023 sqlite, for `kdata db info`.

The counts scan the whole file (16 s at 7.8M posts), so they are kept as the `info` summary
(summary.py): served when current, computed again (and stored where the handle may write) when not.
"""

from __future__ import annotations

from typing import Any

from kohaku_data.db import summary
from kohaku_data.db.enums import Rating, TagType
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.schema_version import current_version

INFO_SUMMARY = "info"
STATS_SUMMARY = "stats"  # the counts part of the service's /stats


def db_info(db: DanbooruDB) -> dict[str, Any]:
    """path, posts, tags, relations, aliases, schema_version, has_updated_at, date_range
    [min, max created_at], ratings."""
    counts = summary.cached(db, INFO_SUMMARY, lambda: count_rows(db))
    return {
        "path": str(db.path),
        **{k: counts[k] for k in ("posts", "tags", "relations", "aliases")},
        "schema_version": current_version(db),
        "has_updated_at": db.has_updated_at,
        "date_range": counts["date_range"],
        "ratings": counts["ratings"],
    }


def count_rows(db: DanbooruDB) -> dict[str, Any]:
    """The scanned part of `db_info`: row counts, date range, posts per rating."""
    conn = db.connection()

    def scalar(sql: str) -> Any:
        return conn.execute(sql).fetchone()[0]

    # created_at strings carry different offsets: their text order is close to, not exactly,
    # time order; min/max of the text are reported as stored.
    low, high = conn.execute("SELECT min(created_at), max(created_at) FROM post").fetchone()
    ratings = {r.name.lower(): 0 for r in Rating}
    for value, count in conn.execute("SELECT rating, count(*) FROM post GROUP BY rating"):
        name = Rating(value).name.lower() if value in Rating._value2member_map_ else str(value)
        ratings[name] = count
    return {
        "posts": sum(ratings.values()),
        "tags": scalar("SELECT count(*) FROM tag"),
        "relations": scalar("SELECT count(*) FROM posttagrelation"),
        "aliases": scalar("SELECT count(*) FROM kdata_tag_alias") if db.has_table("kdata_tag_alias") else 0,
        "date_range": [low, high],
        "ratings": ratings,
    }


def service_stats(db: DanbooruDB) -> dict[str, Any]:
    """posts (and per rating), tags (and per category), max_post_id: the counts of /stats."""
    return summary.cached(db, STATS_SUMMARY, lambda: _service_counts(db))


def _service_counts(db: DanbooruDB, rows: dict[str, Any] | None = None) -> dict[str, Any]:
    conn = db.connection()
    if rows is None:
        ratings = dict(conn.execute("SELECT rating, count(*) FROM post GROUP BY rating"))
    else:  # from count_rows: the same figures without scanning post again
        by_name = {r.name.lower(): r.value for r in Rating}
        ratings = {by_name[name]: n for name, n in rows["ratings"].items() if n and name in by_name}
    by_type = dict(conn.execute("SELECT type, count(*) FROM tag GROUP BY type"))
    return {
        "posts": sum(ratings.values()),
        "posts_by_rating": {Rating(r).name.lower(): n for r, n in sorted(ratings.items())},
        "tags": sum(by_type.values()),
        "tags_by_category": {TagType(t).category_name: n for t, n in sorted(by_type.items())},
        "max_post_id": conn.execute("SELECT max(id) FROM post").fetchone()[0],
    }


def refresh_info(db: DanbooruDB) -> list[str]:
    """Store the current `info` and `stats` summaries (see summary.refresh)."""
    rows = count_rows(db)
    if not summary.store(db, INFO_SUMMARY, rows):
        return []
    summary.store(db, STATS_SUMMARY, _service_counts(db, rows))
    return [INFO_SUMMARY, STATS_SUMMARY]
