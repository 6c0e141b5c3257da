"""Danbooru tag implications and aliases, in the API format, → kdata tables.

`/tag_implications.json` and `/tag_aliases.json` both list records like
``{"id": 1, "antecedent_name": "cat_ears", "consequent_name": "animal_ears", "status": "active"}``.
Only active ones are kept: a record with another status (`deleted`, `retired`, `pending`…)
removes the pair if it was stored. Implications go to `kdata_tag_implication` (migration 0006),
aliases to `kdata_tag_alias` (alias → tag name, 0001; the tag CSV fills it too).

Files: `kdata db import` recognises them by name (`*tag_implications*.json[l][.gz]`,
`*tag_aliases*.json[l][.gz]`); `kdata sync` pulls both endpoints and replaces the tables with
what the server lists as active (see `service/sync.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.records import RecordError

RelationKind = Literal["implications", "aliases"]
IMPLICATIONS_PATH = "/tag_implications.json"
ALIASES_PATH = "/tag_aliases.json"
_TABLES = {
    "implications": ("kdata_tag_implication", "antecedent", "consequent"),
    "aliases": ("kdata_tag_alias", "alias", "tag_name"),
}


@dataclass
class RelationCounts:
    implications: int = 0  # active pairs written
    aliases: int = 0
    removed: int = 0  # stored pairs a non-active record took out

    def add(self, other: "RelationCounts") -> None:
        self.implications += other.implications
        self.aliases += other.aliases
        self.removed += other.removed


@dataclass(frozen=True, slots=True)
class TagRelation:
    antecedent: str
    consequent: str
    active: bool
    # (updated_at as epoch seconds, record id): which of two records of a pair is newer.
    # Danbooru lists newest first, so a pair deleted and approved again appears twice.
    version: tuple[float, int] = (float("-inf"), -1)


def relation_kind(path: Path) -> RelationKind | None:
    """Which relation file `path` is, from its name (`implications.json`, `tag_aliases.jsonl`…);
    None for anything else. The records of both look alike: only the name tells them apart."""
    name = path.name.lower()
    if "implication" in name:
        return "implications"
    if "alias" in name:
        return "aliases"
    return None


def parse_relation(record: Any) -> TagRelation:
    """One API record → TagRelation; RecordError says what is wrong with it."""
    if not isinstance(record, dict):
        raise RecordError("expected a JSON object with antecedent_name, consequent_name and status")
    names = []
    for key in ("antecedent_name", "consequent_name"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
            raise RecordError(f"{key} {value!r} is not a tag name (non-empty, no spaces)")
        names.append(value.strip())
    if names[0] == names[1]:
        raise RecordError(f"a tag cannot relate to itself ({names[0]!r})")
    status = record.get("status", "active")
    if not isinstance(status, str):
        raise RecordError(f"status {status!r} is not a string")
    return TagRelation(names[0], names[1], status == "active", _version(record))


def _version(record: dict) -> tuple[float, int]:
    """(updated_at instant, id) of a record; missing parts sort oldest."""
    from kohaku_data.db.records import _timestamp

    stamp = record.get("updated_at")
    when = _timestamp(stamp) if isinstance(stamp, str) else None
    record_id = record.get("id")
    try:
        seconds = when.timestamp() if when is not None else float("-inf")
    except (OverflowError, ValueError):
        seconds = float("-inf")
    return seconds, record_id if type(record_id) is int else -1


def newest_per_pair(relations: Iterable[TagRelation]) -> list[TagRelation]:
    """One record per (antecedent, consequent): the newest by updated_at, then by id; between
    records that carry neither, the first in the file (the API lists newest first)."""
    newest: dict[tuple[str, str], TagRelation] = {}
    for r in relations:
        pair = (r.antecedent, r.consequent)
        kept = newest.get(pair)
        if kept is None or r.version > kept.version:
            newest[pair] = r
    return list(newest.values())


def write_relations(db: DanbooruDB, kind: RelationKind, relations: list[TagRelation]) -> RelationCounts:
    """Upsert active pairs and delete non-active ones, in one transaction (the last record of
    a pair in the batch wins)."""
    table, left, right = _TABLES[kind]
    latest: dict[tuple[str, str], bool] = {}
    for r in relations:
        latest[(r.antecedent, r.consequent)] = r.active
    active = [pair for pair, on in latest.items() if on]
    gone = [pair for pair, on in latest.items() if not on]
    conn = db.connection()
    with db.database.atomic():
        if kind == "aliases":  # an alias names one tag: the newest active record decides which
            conn.executemany(f'INSERT OR REPLACE INTO "{table}" ("{left}", "{right}") VALUES (?, ?)', active)
        else:
            conn.executemany(f'INSERT OR IGNORE INTO "{table}" ("{left}", "{right}") VALUES (?, ?)', active)
        before = conn.total_changes
        conn.executemany(f'DELETE FROM "{table}" WHERE "{left}" = ? AND "{right}" = ?', gone)
        removed = conn.total_changes - before
    counts = RelationCounts(removed=removed)
    setattr(counts, kind, len(active))
    return counts


def replace_relations(db: DanbooruDB, kind: RelationKind, relations: Iterable[TagRelation]) -> int:
    """Make the table hold exactly the active pairs of `relations` (one transaction): what a
    full listing from the API says. Returns the number of pairs stored."""
    table, left, right = _TABLES[kind]
    pairs = sorted({(r.antecedent, r.consequent) for r in relations if r.active})
    if kind == "aliases":
        pairs = sorted(dict(pairs).items())  # one target per alias (the last in name order)
    with db.database.atomic():
        conn = db.connection()
        conn.execute(f'DELETE FROM "{table}"')
        conn.executemany(f'INSERT INTO "{table}" ("{left}", "{right}") VALUES (?, ?)', pairs)
    return len(pairs)


def parsed_relations(
    records: Iterable[tuple[int, Any, str | None]], on_reject: Any,
) -> Iterator[TagRelation]:
    """The relations of (line, record, error) triples that parse; `on_reject(line, reason,
    record)` gets the others."""
    for line, record, error in records:
        if error is None:
            try:
                yield parse_relation(record)
                continue
            except RecordError as exc:
                error = exc.reason
        on_reject(line, error, record)
