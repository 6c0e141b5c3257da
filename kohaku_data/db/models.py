"""Peewee models of the published Danbooru2023 sqlite, and kdata's own tables.

The classes here are *unbound*: they carry no database. `DanbooruDB` (handle.py) makes bound
subclasses per open file, so two databases can be used in one process without global state.
Columns mirror `resources/danbooru2023-schema.sql` exactly; kdata's additions (alias table,
schema version, sync cursor) live in tables of their own, created by `migrations/`.
"""

from __future__ import annotations

from peewee import CharField, IntegerField, Model, TextField


class Post(Model):
    id = IntegerField(primary_key=True)
    created_at = CharField()  # ISO-8601 with offset, as published
    uploader_id = IntegerField()
    source = CharField()
    md5 = CharField(null=True)
    parent_id = IntegerField(null=True)
    has_children = IntegerField()
    is_deleted = IntegerField()
    is_banned = IntegerField()
    pixiv_id = IntegerField(null=True)
    has_active_children = IntegerField()
    bit_flags = IntegerField()
    has_large = IntegerField()
    has_visible_children = IntegerField()
    image_width = IntegerField()
    image_height = IntegerField()
    file_size = IntegerField()
    file_ext = CharField()
    rating = IntegerField()  # enums.Rating
    score = IntegerField()
    up_score = IntegerField()
    down_score = IntegerField()
    fav_count = IntegerField()
    file_url = CharField(null=True)
    large_file_url = CharField(null=True)
    preview_file_url = CharField(null=True)
    updated_at = CharField()  # absent in copies published before June 2024

    class Meta:
        table_name = "post"


class Tag(Model):
    id = IntegerField(primary_key=True)
    name = CharField(unique=True)
    type = IntegerField()  # enums.TagType
    popularity = IntegerField()  # == number of posttagrelation rows of this tag

    class Meta:
        table_name = "tag"


class PostTagRelation(Model):
    # Plain integer columns (the published file declares them as foreign keys); joins are
    # written explicitly so that bound subclasses never point at another database's models.
    id = IntegerField(primary_key=True)
    post_id = IntegerField(index=True)
    tag_id = IntegerField(index=True)

    class Meta:
        table_name = "posttagrelation"


class TagAlias(Model):
    """kdata table (migration 0002): an alias name resolves to a canonical tag name."""

    alias = TextField(primary_key=True)
    tag_name = TextField()

    class Meta:
        table_name = "kdata_tag_alias"


class SchemaVersion(Model):
    """kdata table: one row per applied migration."""

    version = IntegerField(primary_key=True)
    name = TextField()
    applied_at = TextField()

    class Meta:
        table_name = "kdata_schema_version"


class SyncState(Model):
    """kdata table: resumable cursor of `kdata sync`, per base URL."""

    base_url = TextField(primary_key=True)
    cursor = IntegerField()
    updated_at = TextField()

    class Meta:
        table_name = "kdata_sync_state"


PUBLISHED_MODELS: tuple[type[Model], ...] = (Post, Tag, PostTagRelation)
KDATA_MODELS: tuple[type[Model], ...] = (TagAlias, SchemaVersion, SyncState)
