"""The DB's own keepers: what every writer keeps current after it wrote, at the db/ layer.

A keeper is a function `(db) -> names it stored` that `summary.refresh(db, keepers)` runs after a
write. db/ declares only its own here; a layer above adds its own keepers by passing a longer
list down (the whole list is declared once, in kohaku_data/keepers.py), so db/ never imports a
layer above it and no registry is filled as a side effect of importing something.
"""

from __future__ import annotations

from kohaku_data.db import post_tags, source_trigrams
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.info import refresh_info
from kohaku_data.db.summary import Keeper


def query_bitmap_index(db: DanbooruDB) -> list[str]:
    """The query bitmap index (migration 0009), rebuilt when a write made it stale: readers
    stay right without it but slow."""
    from kohaku_data.db import query_bits  # numpy: imported by writers only

    return ["query bitmap index"] if query_bits.refresh_if_stale(db) else []


def post_tag_blocks(db: DanbooruDB) -> list[str]:
    """The caption blocks of each post's tag ids (migration 0011), re-encoded where written."""
    return ["post tag blocks"] if post_tags.refresh_if_stale(db) else []


def source_trigram_index(db: DanbooruDB) -> list[str]:
    """The trigram index of post.source (migration 0015), rebuilt after a bulk import dropped
    its triggers: `source:` stays right without it but reads the index range."""
    return ["source trigrams"] if source_trigrams.refresh_if_stale(db) else []


# Indexes first (they are not summaries, but go stale with the same writes), then the counts.
DB_KEEPERS: tuple[Keeper, ...] = (query_bitmap_index, post_tag_blocks, source_trigram_index, refresh_info)
