"""Indexes for tag queries (`kohaku_data.db.query`). Indexes only: no table or column changes.

- `posttagrelation(tag_id, post_id)`: covering index, so a tag's post ids come out of one
  index range already sorted, without a table lookup per row (the published `tag_id` index
  holds relation ids only). This is the index that makes `query_ids` fast. It *replaces* the
  published `posttagrelation_tag_id` under the same name (same leading column, so everything
  that used it still can): one index instead of two, ~5 bytes more per relation than the
  published one (~1.2 GB on the full 0.25B-row file) instead of ~3.5 GB for a second index.
- `post(rating, score, fav_count, image_width, image_height, file_ext, file_size, created_at)`:
  covering every column a metatag filters on, so metatag filters read a narrow index instead
  of the wide post rows (urls, source), and `rating:` + `score:` become an index range.
- `post(score)`, `post(fav_count)`, `post(created_at)`: `order:score|favcount|date` with a
  LIMIT and no tags can walk an index and stop early; `date:`/`year:` become a range.
"""

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.migrate import make_covering

INDEXES = {
    "kdata_post_meta": (
        'post ("rating", "score", "fav_count", "image_width", "image_height", "file_ext", '
        '"file_size", "created_at")'
    ),
    "kdata_post_score": 'post ("score")',
    "kdata_post_fav_count": 'post ("fav_count")',
    "kdata_post_created_at": 'post ("created_at")',
}


def migrate(db: DanbooruDB) -> None:
    make_covering(db, "posttagrelation_tag_id", "posttagrelation", ("tag_id", "post_id"))
    conn = db.connection()
    for name, target in INDEXES.items():
        conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON {target}')
