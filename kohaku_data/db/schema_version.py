"""Which migrations a file has: the rows of `kdata_schema_version` (migrate.py writes them).

Apart from the runner so that what reads the version (db/info.py, for `kdata db info`) does not
import the runner, which keeps the summaries current and so builds on info.py.
"""

from __future__ import annotations

from kohaku_data.db.handle import DanbooruDB


def applied_versions(db: DanbooruDB) -> set[int]:
    if not db.has_table("kdata_schema_version"):
        return set()
    rows = db.connection().execute("SELECT version FROM kdata_schema_version").fetchall()
    return {r[0] for r in rows}


def current_version(db: DanbooruDB) -> int:
    """The highest applied migration number (0: none, e.g. a file as published)."""
    return max(applied_versions(db), default=0)
