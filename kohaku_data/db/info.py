"""`db_info(db)`: counts and ranges of a Danbooru2023 sqlite, for `kdata db info`."""

from __future__ import annotations

from typing import Any

from kohaku_data.db.enums import Rating
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.migrate import current_version


def db_info(db: DanbooruDB) -> dict[str, Any]:
    """posts, tags, relations, schema_version, date_range [min, max created_at], ratings."""
    conn = db.connection()

    def scalar(sql: str) -> Any:
        return conn.execute(sql).fetchone()[0]

    # created_at strings carry different offsets: their text order is close to, not exactly,
    # time order; min/max of the text are reported as stored (cheap on 7.8M rows).
    low, high = conn.execute("SELECT min(created_at), max(created_at) FROM post").fetchone()
    ratings = {r.name.lower(): 0 for r in Rating}
    for value, count in conn.execute("SELECT rating, count(*) FROM post GROUP BY rating"):
        name = Rating(value).name.lower() if value in Rating._value2member_map_ else str(value)
        ratings[name] = count
    return {
        "path": str(db.path),
        "posts": scalar("SELECT count(*) FROM post"),
        "tags": scalar("SELECT count(*) FROM tag"),
        "relations": scalar("SELECT count(*) FROM posttagrelation"),
        "aliases": scalar("SELECT count(*) FROM kdata_tag_alias") if db.has_table("kdata_tag_alias") else 0,
        "schema_version": current_version(db),
        "has_updated_at": db.has_updated_at,
        "date_range": [low, high],
        "ratings": ratings,
    }
