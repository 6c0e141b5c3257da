"""The trigram index of `post.source` (migration 0015), for `source:` patterns.

`kdata_source_fts` is an FTS5 table with the trigram tokenizer over `post.source` (external
content: no copy of the text, ~the size of the trigram lists), kept current by triggers on
`post`, so `source:https://*pixiv*` reads the few sources holding `pix`/`ixi`/`xiv` instead of
the whole `https://` range of the NOCASE index (db/query_plan.py `_source_sql`).

- Trusted only while its triggers exist (`is_current`): a writer that drops them may leave the
  entries behind the rows, and queries then take 0014's index range instead.
- A bulk import drops the triggers (`retire`): indexing each row as it is written costs ~6.7 µs
  a post (2/3 of writing the post row), a `'rebuild'` of the whole table at the end ~2.4 µs.
  The importer's refresh puts them back and rebuilds (`refresh_if_stale`, a keeper of
  db/keepers.py); a killed import leaves them missing, which `is_current` turns into "not
  used" until the next import, sync or `kdata db migrate`.
- Where this SQLite has no FTS5 trigram tokenizer (before 3.34) nothing is created and
  `source:` keeps the index range.
"""

from __future__ import annotations

import sqlite3

from kohaku_data.db.handle import DanbooruDB

TABLE = "kdata_source_fts"
_TRIGGERS = {
    # INSERT OR REPLACE (the importers' update path) deletes the old row without firing delete
    # triggers (recursive_triggers is off): take its entry out first, with the values indexed,
    # or the external-content table keeps a stale entry and later reads it as corrupt.
    "replace": ("BEFORE INSERT ON post WHEN EXISTS (SELECT 1 FROM post WHERE id = new.id)",
                f"INSERT INTO {TABLE}({TABLE}, rowid, source) "
                "SELECT 'delete', id, source FROM post WHERE id = new.id;"),
    "insert": ("AFTER INSERT ON post",
               f"INSERT INTO {TABLE}(rowid, source) VALUES (new.id, new.source);"),
    "delete": ("AFTER DELETE ON post",
               f"INSERT INTO {TABLE}({TABLE}, rowid, source) VALUES ('delete', old.id, old.source);"),
    "update": ("AFTER UPDATE OF id, source ON post",
               f"INSERT INTO {TABLE}({TABLE}, rowid, source) VALUES ('delete', old.id, old.source); "
               f"INSERT INTO {TABLE}(rowid, source) VALUES (new.id, new.source);"),
}


def _trigger_names() -> list[str]:
    return [f"{TABLE}_{name}" for name in _TRIGGERS]


def install(conn: sqlite3.Connection) -> bool:
    """Create (or rebuild) the table and its triggers; False where this SQLite lacks FTS5's
    trigram tokenizer (3.34+), leaving the file as it was (source: keeps the index)."""
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.kdata_trigram_probe USING fts5(x, tokenize='trigram')")
        conn.execute("DROP TABLE temp.kdata_trigram_probe")
    except sqlite3.OperationalError:
        return False
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(source, "
                 "content='post', content_rowid='id', tokenize='trigram', detail='none')")
    for name, (event, body) in zip(_trigger_names(), _TRIGGERS.values()):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.execute(f"CREATE TRIGGER {name} {event} BEGIN {body} END")
    conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")
    return True


def _triggers_found(conn: sqlite3.Connection) -> int:
    names = _trigger_names()
    return conn.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN "
                        f"({', '.join('?' * len(names))})", names).fetchone()[0]


def is_current(db: DanbooruDB) -> bool:
    """Whether `source:` may read the table: it exists and every trigger keeps it current."""
    return db.has_table(TABLE) and _triggers_found(db.connection()) == len(_TRIGGERS)


def retire(db: DanbooruDB) -> None:
    """Drop the triggers before a bulk write (see the module docstring); no-op without the table."""
    if db.has_table(TABLE):
        for name in _trigger_names():
            db.connection().execute(f"DROP TRIGGER IF EXISTS {name}")


def refresh_if_stale(db: DanbooruDB) -> bool:
    """Put the triggers back and rebuild the entries after `retire` (or a killed import); True
    when it did. A file without the table (no migration 0015, or no trigram tokenizer) is left alone."""
    if db.readonly or not db.has_table(TABLE) or is_current(db):
        return False
    with db.database.atomic():
        install(db.connection())
    return True
