"""Integer encodings used by the published Danbooru2023 sqlite, and Danbooru's own codes."""

from __future__ import annotations

from enum import IntEnum


class Rating(IntEnum):
    """`post.rating` in the published sqlite."""

    GENERAL = 0
    SENSITIVE = 1
    QUESTIONABLE = 2
    EXPLICIT = 3

    @property
    def letter(self) -> str:
        return "gsqe"[self.value]

    @classmethod
    def from_letter(cls, letter: str) -> "Rating":
        """Danbooru's API letters g/s/q/e (and the long names) to the sqlite integer."""
        key = letter.strip().lower()
        if key in _RATING_WORDS:
            return cls(_RATING_WORDS[key])
        raise ValueError(f"unknown rating {letter!r}: expected one of g, s, q, e")


_RATING_WORDS = {
    "g": 0, "general": 0, "safe": 0,
    "s": 1, "sensitive": 1,
    "q": 2, "questionable": 2,
    "e": 3, "explicit": 3,
}


class TagType(IntEnum):
    """`tag.type` in the published sqlite (not Danbooru's API category numbers)."""

    GENERAL = 0
    ARTIST = 1
    CHARACTER = 2
    COPYRIGHT = 3
    META = 4

    @property
    def category_name(self) -> str:
        return self.name.lower()

    @classmethod
    def from_danbooru_category(cls, category: int) -> "TagType":
        """Danbooru's categories (API, tag CSVs): 0 general, 1 artist, 3 copyright, 4 character, 5 meta."""
        try:
            return cls(_DANBOORU_CATEGORY[int(category)])
        except (KeyError, ValueError):
            raise ValueError(
                f"unknown Danbooru tag category {category!r}: expected 0, 1, 3, 4 or 5"
            ) from None


_DANBOORU_CATEGORY = {0: 0, 1: 1, 3: 3, 4: 2, 5: 4}

# `tag_string_<field>` in the API ↔ tag type in the sqlite.
TAG_STRING_FIELDS: dict[str, TagType] = {
    "tag_string_general": TagType.GENERAL,
    "tag_string_artist": TagType.ARTIST,
    "tag_string_character": TagType.CHARACTER,
    "tag_string_copyright": TagType.COPYRIGHT,
    "tag_string_meta": TagType.META,
}
