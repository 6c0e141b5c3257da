"""Metadata DB: models, handle, importers, query parser and migrations."""

from kohaku_data.db.enums import Rating, TagType
from kohaku_data.db.handle import DanbooruDB, DatabaseError

__all__ = ["DanbooruDB", "DatabaseError", "Rating", "TagType"]
