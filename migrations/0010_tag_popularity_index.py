"""Index for wildcard tags (`kohaku_data.db.query_plan`). Index only: no table or column changes.

- `tag(popularity DESC, name)`: a wildcard (`*_hair`) uses the most popular matching tags
  (Danbooru's cap of 100); walking this index in order, SQLite stops at the 100th match
  instead of testing every name of the ~1M-row tag table and sorting the matches (the
  published `tag_name` index only helps prefix patterns). Also serves "most popular tags"
  reads (the unknown-tag suggestions).
"""

from kohaku_data.db.handle import DanbooruDB


def migrate(db: DanbooruDB) -> None:
    db.connection().execute('CREATE INDEX IF NOT EXISTS "kdata_tag_popularity" ON tag ("popularity" DESC, "name")')
