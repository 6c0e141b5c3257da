"""Index- and bitmap-backed counts for the rest of Danbooru's metatags (issue 20).

- `post(source COLLATE NOCASE)`: `source:https://*pixiv*` reads the range of its literal prefix
  from this index (LIKE folds ASCII case as NOCASE does), never a post row.
- The bitmap index of 0009 rebuilt in layout 4 (`kohaku_data.db.query_bits`): dense file_size,
  up_score, abs(down_score), image_width, image_height, pixiv_id, file_ext (coded), created_at
  (as an integer) and a flags column (has_children, parent_id, source, pixiv_id, is_banned), so
  `filesize:`, `upvotes:`, `pixiv_id:`, `age:`, `is:parent`, `has:source`, `is:png` and the
  hidden-deleted check are compares over arrays; its triggers now watch those columns too.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.query_bits import install_triggers, refresh_if_stale

INDEXES = {"kdata_post_source": 'post ("source" COLLATE NOCASE)'}


def migrate(db: DanbooruDB) -> None:
    conn = db.connection()
    for name, target in INDEXES.items():
        conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON {target}')
    if db.has_table("kdata_query_bits_state"):
        install_triggers(conn)
        refresh_if_stale(db)
