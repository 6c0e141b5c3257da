"""Danbooru API post records → validated rows of the published `post` table (no I/O).

`parse_post(dict)` checks types and converts ratings (g/s/q/e), booleans and tag strings
(`tag_string_<type>`) into a `ParsedPost`; a bad record raises `RecordError` with the reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any


from kohaku_data.db.enums import TAG_STRING_FIELDS, Rating, TagType
from kohaku_data.errors import KdataError


class RecordError(KdataError):
    """One input record is unusable (missing id, unknown rating, wrong type, broken line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InputFileError(KdataError):
    """An input file cannot be imported at all (missing, unknown format, read-only DB)."""


class UnknownInputError(InputFileError):
    """An input that is none of the formats kdata imports (an image, a zip, a parquet file of
    unknown columns): found before anything is written."""


# --------------------------------------------------------------------------------------------
# Post records → rows
# --------------------------------------------------------------------------------------------
# (column, kind) in the published column order; `updated_at` is last and optional per file.
# Kinds: int (required), int? (nullable), str, str?, bool (true/false → 1/0; null → 0), rating.
_POST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "int"), ("created_at", "str"), ("uploader_id", "int"), ("source", "src"),
    ("md5", "str?"), ("parent_id", "int?"), ("has_children", "bool"), ("is_deleted", "bool"),
    ("is_banned", "bool"), ("pixiv_id", "int?"), ("has_active_children", "bool"),
    ("bit_flags", "int"), ("has_large", "bool"), ("has_visible_children", "bool"),
    ("image_width", "int"), ("image_height", "int"), ("file_size", "int"), ("file_ext", "str"),
    ("rating", "rating"), ("score", "int"), ("up_score", "int"), ("down_score", "int"),
    ("fav_count", "int"), ("file_url", "str?"), ("large_file_url", "str?"),
    ("preview_file_url", "str?"),
)
_RATINGS = {"g": 0, "s": 1, "q": 2, "e": 3}


@dataclass(slots=True)
class ParsedPost:
    """One validated post: its row (published column order, updated_at last) and tags."""

    id: int
    row: tuple
    updated_at: str
    tags: dict[str, TagType | None]  # name → type from its tag_string_<field> (None: unknown)


def _convert(name: str, kind: str, value: Any) -> Any:
    """Slow path of `parse_post`: convert one unusual value or explain why it is bad."""
    if kind == "rating":
        if isinstance(value, str):
            try:
                return int(Rating.from_letter(value))
            except ValueError as exc:
                raise RecordError(str(exc)) from None
        if type(value) is int and 0 <= value <= 3:
            return value
        raise RecordError(f"unknown rating {value!r}: expected one of g, s, q, e")
    if value is None:
        if kind.endswith("?"):
            return None
        if kind == "bool":
            return 0
        if kind == "src":
            return ""
        raise RecordError(f"missing field {name!r}")
    if kind in ("int", "int?") and type(value) is int:
        return value
    if kind == "bool" and (type(value) is bool or value in (0, 1)):
        return int(value)
    if kind in ("str", "str?", "src") and isinstance(value, str):
        return value
    want = {"int": "an integer", "int?": "an integer or null", "bool": "true or false"}.get(kind, "a string")
    raise RecordError(f"field {name!r} must be {want}, got {value!r}")


def parse_post(post: Any) -> ParsedPost:
    """Validate one API post dict; raise `RecordError` saying what is wrong with it."""
    if not isinstance(post, dict):
        raise RecordError(f"a post must be a JSON object, got {type(post).__name__}")
    values = list(map(post.get, _NAMES))
    rating = _RATINGS.get(values[_RATING_AT]) if type(values[_RATING_AT]) is str else None
    if rating is not None and tuple(map(type, values)) in _GOOD_TYPES:
        # Fast path, nearly every API record: the types are right as they are (JSON booleans
        # are Python ints, stored by sqlite as 1/0); only the rating letter needs mapping.
        values[_RATING_AT] = rating
    else:
        if values[0] is None:
            raise RecordError("missing field 'id'")
        values = [_convert(name, kind, value) for (name, kind), value in zip(_POST_COLUMNS, values)]
    updated_at = post.get("updated_at")
    if updated_at is None:
        updated_at = values[1]  # the same fill as migration 0002: never updated since creation
    elif type(updated_at) is not str:
        raise RecordError(f"field 'updated_at' must be a string, got {updated_at!r}")
    values.append(updated_at)
    return ParsedPost(values[0], tuple(values), updated_at, _post_tags(post))


def _good_types() -> frozenset[tuple[type, ...]]:
    """Every per-column type signature that needs no conversion (nullable columns: 2 choices)."""
    choices = {"int": (int,), "int?": (int, type(None)), "str": (str,), "src": (str,),
               "str?": (str, type(None)), "bool": (bool,), "rating": (str,)}
    return frozenset(itertools.product(*(choices[kind] for _, kind in _POST_COLUMNS)))


_NAMES = tuple(name for name, _ in _POST_COLUMNS)
_RATING_AT = _NAMES.index("rating")
_GOOD_TYPES = _good_types()


def _post_tags(post: dict) -> dict[str, TagType | None]:
    tags: dict[str, TagType | None] = {}
    typed = False
    # Reversed, so that a name in two strings keeps the type of the first (dict.update is C-fast).
    for field_name, tag_type in _TAG_FIELDS_REVERSED:
        value = post.get(field_name)
        if value is None:
            continue
        if type(value) is not str:
            raise RecordError(f"field {field_name!r} must be a string, got {value!r}")
        typed = True
        tags.update(dict.fromkeys(value.split(), tag_type))
    if not typed:
        # No per-category strings (e.g. a trimmed dump): take `tag_string`, types unknown.
        value = post.get("tag_string") or ""
        if not isinstance(value, str):
            raise RecordError(f"field 'tag_string' must be a string, got {value!r}")
        tags = dict.fromkeys(value.split())
    return tags


_TAG_FIELDS_REVERSED = tuple(reversed(TAG_STRING_FIELDS.items()))


def _timestamp(value: str | None) -> datetime | None:
    """ISO-8601 with offset → aware datetime (compare instants, not strings: offsets differ)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _is_newer(new: str, old: str | None) -> bool:
    new_t, old_t = _timestamp(new), _timestamp(old)
    if new_t is None:
        return False
    if old_t is None:
        return True
    try:
        return new_t > old_t
    except TypeError:  # one naive, one aware: fall back to the text
        return new > (old or "")
