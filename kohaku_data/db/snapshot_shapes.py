"""Column shapes of the public Danbooru metadata parquet snapshots → kdata's field names (no I/O).

The same post fields are published under several spellings:
- flat, API-like (`nyanko-devs/danbooru2026` posts-snapshot): `id`, `md5`, `tag_string_general`…
- media asset fields flattened with underscores (`trojblue/danbooru2025-metadata`):
  `media_asset_md5`, `media_asset_image_width`…
- flattened with dots and the id as the pandas index (`deepghs/danbooru2024` metadata.parquet):
  `media_asset.md5`, and `id` named only in the file's `pandas` metadata (or `__index_level_0__`).
A field is taken from its flat column first, then from the media asset's. Files of tags
(`name`, `category`[, `post_count`]) are recognised too. Anything else is one sentence naming
the columns kdata needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from kohaku_data.db.enums import TAG_STRING_FIELDS
from kohaku_data.db.records import _POST_COLUMNS, UnknownInputError

# kind of each post field (records._POST_COLUMNS) plus the ones kdata reads beside them.
POST_FIELD_KINDS: dict[str, str] = {
    **dict(_POST_COLUMNS), "updated_at": "time?", "created_at": "time",
    "tag_string": "tags", **dict.fromkeys(TAG_STRING_FIELDS, "tags"),
}
# A row without these cannot become a post: rejected with the reason.
REJECT_IF_NULL = ("id", "created_at", "rating")
_NEEDED_HINT = ("id (or a pandas index), created_at, rating, and tag_string or the tag_string_* columns; "
                "a tag table needs name and category")


class UnknownShapeError(UnknownInputError):
    """A parquet file whose columns are not those of any posts or tags snapshot kdata knows."""


@dataclass(frozen=True)
class Shape:
    """How one file's columns map to kdata's fields."""

    kind: Literal["posts", "tags"]
    layout: str  # "flat", "underscore-flattened", "dot-flattened" (+ ", pandas index")
    columns: dict[str, str]  # kdata field → column name in the file
    absent: tuple[str, ...] = field(default=())  # post fields the file lacks (defaults stored)

    @property
    def label(self) -> str:
        return f"parquet {self.kind} ({self.layout})"


def pandas_index(metadata: dict[bytes, bytes] | None) -> list[str]:
    """The index column names the parquet's `pandas` metadata declares (plain column names only)."""
    raw = (metadata or {}).get(b"pandas")
    if not raw:
        return []
    try:
        index = json.loads(raw).get("index_columns", [])
    except (ValueError, AttributeError):
        return []
    return [c for c in index if isinstance(c, str)]


def recognise(file_name: str, names: list[str], index: list[str]) -> Shape:
    """The shape of a file with these column names (`index`: its pandas index columns)."""
    present = set(names)
    if {"name", "category"} <= present and "rating" not in present:
        return Shape("tags", "flat", {k: k for k in ("name", "category", "post_count") if k in present})
    columns: dict[str, str] = {}
    for name in POST_FIELD_KINDS:
        for candidate in (name, f"media_asset_{name}", f"media_asset.{name}"):
            if candidate in present:
                columns[name] = candidate
                break
    from_index = False
    if "id" not in columns or "id" in index:
        ids = [c for c in index if c in present]
        if len(ids) == 1:
            columns["id"], from_index = ids[0], True
    has_tags = "tag_string" in columns or any(f in columns for f in TAG_STRING_FIELDS)
    if not all(f in columns for f in REJECT_IF_NULL) or not has_tags:
        shown = ", ".join(names[:20]) + (f" … ({len(names)} columns)" if len(names) > 20 else "")
        raise UnknownShapeError(
            f"{file_name} has no column shape kdata can import: a posts snapshot needs {_NEEDED_HINT} "
            f"(it has {shown or 'no columns'})"
        )
    if any(c.startswith("media_asset.") for c in present):
        layout = "dot-flattened"
    elif any(c.startswith("media_asset_") for c in present):
        layout = "underscore-flattened"
    else:
        layout = "flat"
    if from_index:
        layout += ", pandas index"
    absent = tuple(f for f in POST_FIELD_KINDS if f not in columns and f != "tag_string" and f not in TAG_STRING_FIELDS)
    return Shape("posts", layout, columns, absent)
