"""Indexes for the status / relation / identity metatags of `kohaku_data.db.query`, and the
bitmap index of 0009 rebuilt in layout 3 (dense is_deleted and tag counts). Indexes only: no
table or column changes.

- `post(id) WHERE is_deleted = 1`: the deleted posts, read as one short index (Danbooru hides
  them by default, so every query takes them out; ~6% of the posts, a few MB).
- `post(md5)`: `md5:` is one seek per value.
- `post(parent_id)`: `parent:N`, `child:` and the parent's state are seeks.
- `post(pixiv_id)`: `pixiv_id:` is a range of the index.
- `post(up_score)`: `order:upvotes` with a limit walks the index.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.query_bits import install_triggers, refresh_if_stale

INDEXES = {
    "kdata_post_deleted": 'post ("id") WHERE is_deleted = 1',
    "kdata_post_md5": 'post ("md5")',
    "kdata_post_parent_id": 'post ("parent_id")',
    "kdata_post_pixiv_id": 'post ("pixiv_id")',
    "kdata_post_up_score": 'post ("up_score")',
}


def migrate(db: DanbooruDB) -> None:
    conn = db.connection()
    for name, target in INDEXES.items():
        conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON {target}')
    if db.has_table("kdata_query_bits_state"):
        install_triggers(conn)
        refresh_if_stale(db)
