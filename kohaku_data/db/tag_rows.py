"""Danbooru tag CSV rows (`name,category,post_count,"alias1,alias2"`, no header) → the `tag`
table (types) and `kdata_tag_alias` (aliases). Popularity is never taken from the CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


from kohaku_data.db.enums import TagType
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.records import RecordError
from kohaku_data.db.upsert import _require_writable


# --------------------------------------------------------------------------------------------
# Tags (Danbooru tag CSVs: name,category,post_count,"alias1,alias2"; no header)
# --------------------------------------------------------------------------------------------
@dataclass
class TagCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    aliases: int = 0

    def add(self, other: "TagCounts") -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.aliases += other.aliases


@dataclass(slots=True)
class ParsedTag:
    name: str
    type: TagType
    aliases: list[str]


def parse_tag_row(row: list[str]) -> ParsedTag:
    """One CSV row → tag; the CSV's post count is checked but not used (popularity = relations)."""
    if len(row) not in (3, 4):
        raise RecordError(f"expected 3 or 4 columns (name,category,post_count,aliases), got {len(row)}")
    name = row[0].strip()
    if not name or any(c.isspace() for c in name):
        raise RecordError(f"bad tag name {row[0]!r}: must be non-empty without spaces")
    try:
        tag_type = TagType.from_danbooru_category(int(row[1]))
    except ValueError as exc:
        raise RecordError(str(exc).replace("invalid literal", "bad category")) from None
    if not row[2].strip().lstrip("-").isdigit():
        raise RecordError(f"post_count {row[2]!r} is not an integer")
    aliases = [a for a in (row[3].split(",") if len(row) == 4 else []) if a.strip() and a.strip() != name]
    return ParsedTag(name, tag_type, [a.strip() for a in aliases])


def upsert_tags(db: DanbooruDB, tags: list[ParsedTag]) -> TagCounts:
    """Create missing tags, set the type of existing ones, and record aliases; one transaction.

    A tag's popularity is never taken from the CSV: new tags start at 0 relations.
    """
    _require_writable(db)
    counts = TagCounts()
    latest = {t.name: t for t in tags}  # a name twice in one batch: the last row wins
    conn = db.connection()
    with db.database.atomic():
        stored = dict(conn.execute(
            "SELECT name, type FROM tag WHERE name IN (SELECT value FROM json_each(?))",
            (json.dumps(list(latest)),),
        ).fetchall())
        new = [(t.name, int(t.type)) for t in latest.values() if t.name not in stored]
        changed = [(int(t.type), t.name) for t in latest.values() if t.name in stored and stored[t.name] != t.type]
        conn.executemany("INSERT INTO tag (name, type, popularity) VALUES (?, ?, 0)", new)
        conn.executemany("UPDATE tag SET type = ? WHERE name = ?", changed)
        aliases = [(a, t.name) for t in latest.values() for a in t.aliases]
        conn.executemany("INSERT OR REPLACE INTO kdata_tag_alias (alias, tag_name) VALUES (?, ?)", aliases)
    counts.inserted, counts.updated = len(new), len(changed)
    counts.unchanged = len(latest) - len(new) - len(changed)
    counts.aliases = len(aliases)
    return counts
