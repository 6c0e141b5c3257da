"""Provenance of imported files and the post fields a snapshot left unknown (`kdata db import`).

- `kdata_import_source`: one row per imported file (name, size, sha256 streamed while it was
  read, shape, row counts, rejects, the policy choices in force as JSON); a rerun of the same
  file bumps `runs` and keeps the counts of the run that last changed the DB. `kdata db info`
  lists them; a build's lock and card name them.
- `kdata_post_unknown`: posts whose published NOT NULL fields came as NULL (the danbooru2026
  snapshot's `is_deleted`, `uploader_id`, `is_banned` blocks): the post table holds the
  default (0 / '' / not deleted), `fields` names the ones that are really unknown, comma-separated.
  WITHOUT ROWID: a lookup by post id is one primary-key read.
"""

from kohaku_data.db.handle import DanbooruDB


def migrate(db: DanbooruDB) -> None:
    conn = db.connection()
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "kdata_import_source" ('
        '"sha256" TEXT NOT NULL, "name" TEXT NOT NULL, "size" INTEGER NOT NULL, "format" TEXT NOT NULL, '
        '"rows" INTEGER NOT NULL, "inserted" INTEGER NOT NULL, "updated" INTEGER NOT NULL, '
        '"unchanged" INTEGER NOT NULL, "rejected" INTEGER NOT NULL, "policies" TEXT NOT NULL, '
        '"first_imported_at" TEXT NOT NULL, "last_imported_at" TEXT NOT NULL, "runs" INTEGER NOT NULL, '
        'PRIMARY KEY ("sha256", "name"))'
    )
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "kdata_post_unknown" ('
        '"post_id" INTEGER PRIMARY KEY, "fields" TEXT NOT NULL) WITHOUT ROWID'
    )
