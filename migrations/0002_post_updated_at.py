"""Copies published before June 2024 lack `post.updated_at`: add it, filled from `created_at`.

Afterwards the file has the newer published column set, and importers can compare a record's
`updated_at` with the stored one. SQLite cannot add a NOT NULL column without a default, so
the column is declared `NOT NULL DEFAULT ''` and then filled for every row (no row keeps '').
A file that already has the column is left untouched.
"""

from kohaku_data.db.handle import DanbooruDB


def migrate(db: DanbooruDB) -> None:
    if "updated_at" in db.columns("post"):
        return
    conn = db.connection()
    conn.execute('ALTER TABLE "post" ADD COLUMN "updated_at" VARCHAR(255) NOT NULL DEFAULT \'\'')
    # Never updated since creation is the only thing known about these posts.
    conn.execute('UPDATE "post" SET "updated_at" = "created_at"')
