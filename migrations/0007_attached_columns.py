"""Per-post data from outside (`kdata db attach`): aesthetic scores, natural-language captions.

- `kdata_attached_column`: one row per attached column name (kind `numeric` or `text`, the file
  it came from, its sha256, how many values and rejects) — a rerun replaces the whole column.
- `kdata_attached_value`: (name, post_id) → `num` (numeric columns) or `txt` (text columns);
  WITHOUT ROWID so a page of posts is one primary-key range read.
- `kdata_attached_reject`: what the last attach of a column refused (unknown post id, bad
  value), with the input row number.
"""

from kohaku_data.db.handle import DanbooruDB


def migrate(db: DanbooruDB) -> None:
    conn = db.connection()
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "kdata_attached_column" ('
        '"name" TEXT PRIMARY KEY, "kind" TEXT NOT NULL, "source" TEXT NOT NULL, '
        '"sha256" TEXT NOT NULL, "posts" INTEGER NOT NULL, "rejected" INTEGER NOT NULL)'
    )
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "kdata_attached_value" ('
        '"name" TEXT NOT NULL, "post_id" INTEGER NOT NULL, "num" REAL, "txt" TEXT, '
        'PRIMARY KEY ("name", "post_id")) WITHOUT ROWID'
    )
    conn.execute(
        'CREATE TABLE IF NOT EXISTS "kdata_attached_reject" ('
        '"name" TEXT NOT NULL, "row" INTEGER NOT NULL, "post_id" TEXT, "reason" TEXT NOT NULL, '
        '"value" TEXT, PRIMARY KEY ("name", "row")) WITHOUT ROWID'
    )
