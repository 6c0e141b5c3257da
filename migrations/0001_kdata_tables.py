"""kdata's own tables: applied migrations, tag aliases, the sync cursor.

Separate tables (prefix `kdata_`) so the published tables stay exactly as published.
"""

from kohaku_data.db.handle import DanbooruDB


def migrate(db: DanbooruDB) -> None:
    db.database.create_tables([db.SchemaVersion, db.TagAlias, db.SyncState], safe=True)
    # Reverse lookups (all aliases of a tag) without scanning the table.
    db.connection().execute(
        'CREATE INDEX IF NOT EXISTS "kdata_tag_alias_tag_name" ON "kdata_tag_alias" ("tag_name")'
    )
