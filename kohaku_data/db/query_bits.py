"""A bitmap index for whole-result queries and counts at full size (migration 0009).

At 7.8M posts, `1girl solo -comic rating:g,s score:>10 --count` moves ~15M ids out of SQLite
(the two popular tags and the metatag range), ~1.5 s however they are intersected. This index
holds, per id in `[base, base + span)`:

- one packed bitmap per tag with at least `span / 64` posts (below that, reading the tag's ids
  from the covering index is cheaper than unpacking a bitmap: ~70 ns per id against ~1 ns per
  id of the span); 190 tags and 52% of the relations on the 1M-post sample;
- dense `rating`, `score` and `fav_count` columns (narrowest integer type), the metatags recipes filter
  on, and a bitmap of the ids that are posts;
- (layout 4) dense `file_size`, `up_score`, `abs(down_score)`, `image_width`, `image_height`,
  `pixiv_id` (NULL as 0, its nullness in `flags`), `file_ext` as a code of the `vocab:filetype`
  list, `created_at` as the integer YYYYMMDDhhmmssfff of its first 23 characters (only when
  every value has that shape and is longer: see `date_bound`), and `flags`, one bit per
  is:/has: predicate (FLAG_BITS): so `filesize:`, `upvotes:`, `pixiv_id:`, `age:`, `is:parent`,
  `has:source`, `is:png` are a compare over a span-long array, not a row read per post.

Building it reads the posts `_BUILD_CHUNK` ids at a time and holds each dense column in the
narrowest type its values so far need (widened when a chunk's do not fit: the stored type is
that of the whole int64 column narrowed), written once the posts are read; then the tag counts
likewise, then one bitmap at a time. So a build holds about the stored size of the columns
(~26-32 bytes per id of the span, 8 of them the date), not 8 bytes per column per id.

A query over it is a few vectorised boolean operations on span-long arrays; tags without a
bitmap and metatags without a column (width:, date:, …) are read as usual and set into the
same arrays. The published tables are not changed: the index lives in kdata tables.

Never stale: triggers on `post` (insert, delete, update of id/rating/score/fav_count) and on
`posttagrelation` clear the `valid` flag in the same transaction as the write (a guarded
trigger costs ~5% on bulk inserts), and `open_bits` returns None unless the flag is set, so
queries fall back to the array engine until `refresh_if_stale(db)` rebuilds it. Migration
0009 builds it; a writer that is done (import, sync: `db.summary.refresh` is the place) calls
`refresh_if_stale(db)` so the next query finds it current.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from kohaku_data.db.handle import DanbooruDB

BITS_TABLE = "kdata_query_bits"
STATE_TABLE = "kdata_query_bits_state"
# metatag name → post column of a dense array (stored in the narrowest integer type that holds
# the column's range: int16 scores at full size read in half the time of int32)
# Predicates of query_plan.PREDICATES held as bits of the dense `flags` column (the SQL is
# the same condition, so the two engines agree by construction).
FLAG_BITS = {"parent": (1, "has_children = 1"), "no_children": (2, "has_children = 0"),
             "child": (4, "parent_id IS NOT NULL"), "has_source": (8, "source != ''"),
             "pixiv": (16, "pixiv_id IS NOT NULL"), "banned": (32, "is_banned = 1")}
FLAG_NOT = {"no_parent": "child", "no_source": "has_source", "no_pixiv": "pixiv"}
_FLAGS_SQL = " | ".join(f"(({sql}) << {bit.bit_length() - 1})" for bit, sql in FLAG_BITS.values())
DENSE_POST = {"rating": "rating", "score": "score", "favcount": "fav_count",
              "deleted": "is_deleted", "filesize": "file_size", "upvotes": "up_score",
              "downvotes": "abs(down_score)", "width": "image_width", "height": "image_height",
              "pixiv_id": "pixiv_id", "flags": _FLAGS_SQL}
# Dense columns whose values are not the column's own (codes, NULL as 0): never sort keys.
NOT_KEYS = ("pixiv_id", "flags", "filetype", "date")
# tag counts per post (Danbooru2023 has no tag_count columns): counted from the relations
# with tag.type 0 general, 1 artist, 2 character, 3 copyright, 4 meta
DENSE_COUNTS = {"tagcount": None, "gentags": 0, "arttags": 1, "chartags": 2, "copytags": 3,
                "metatags": 4}
DENSE = (*DENSE_POST, *DENSE_COUNTS, "filetype", "date")
# created_at's first 23 characters, the shape the date column encodes (digits elsewhere)
_DATE_SEPARATORS = {4: "-", 7: "-", 10: "T", 13: ":", 16: ":", 19: "."}
_DATE_LEN = 23
# Ids read per step while building the post columns (bounded memory at any size: ~80 bytes of
# group_concat text per post, held by sqlite and again as Python strings).
_BUILD_CHUNK = 1 << 16
# Ids read per step while building a tag's bitmap (~8 bytes of text per post of the tag).
_TAG_CHUNK = 1 << 21
# Relations read per step while counting tags (~10 bytes of text each).
_COUNT_CHUNK = 262_144
_NARROW = (np.int8, np.int16, np.int32, np.int64)
# Bumped whenever what _build writes changes: an index of another layout counts as stale.
LAYOUT = 4
# A tag gets a bitmap from this share of the span up (see the module docstring).
BITMAP_SHARE = 64
# Publishing writes that change what a query answers.
_TRIGGERS = {
    "post_insert": "AFTER INSERT ON post",
    "post_delete": "AFTER DELETE ON post",
    "post_update": "AFTER UPDATE OF id, rating, score, fav_count, is_deleted, file_size, up_score, "
                   "down_score, image_width, image_height, pixiv_id, has_children, parent_id, "
                   "source, is_banned, file_ext, created_at ON post",
    "tag_update": "AFTER UPDATE OF type ON tag",
    "rel_insert": "AFTER INSERT ON posttagrelation",
    "rel_delete": "AFTER DELETE ON posttagrelation",
    "rel_update": "AFTER UPDATE ON posttagrelation",
}


@dataclass
class Bits:
    """A valid bitmap index on one connection; arrays are read on first use and kept."""

    conn: sqlite3.Connection
    base: int
    span: int
    min_popularity: int
    tags: frozenset[int]
    itemsize: dict[str, int]  # dense column → bytes per value
    generation: int = 0
    _cache: dict = field(default_factory=dict)

    # Masks are *packed* (np.packbits order, span bits, zero padding): and/or/not over 1/8 of
    # the bytes of a bool array, and stored bitmaps are used as read, never unpacked.
    def tag(self, tag_id: int) -> np.ndarray:
        """Packed mask of the posts of a tag that has a bitmap."""
        return self._packed(f"tag:{tag_id}")

    def exists(self) -> np.ndarray:
        return self._packed("exists")

    def column(self, name: str) -> np.ndarray:
        key = f"col:{name}"
        if key not in self._cache:
            self._cache[key] = np.frombuffer(self._blob(key), dtype=f"i{self.itemsize[name]}")
        return self._cache[key]

    def has(self, name: str) -> bool:
        """A dense column of that name exists (the date column only where created_at fits)."""
        return name in self.itemsize

    def vocab(self, name: str) -> list[str]:
        """The values a coded column's codes 1, 2, ... stand for."""
        key = f"vocab:{name}"
        if key not in self._cache:
            text = bytes(self._blob(key)).decode()
            self._cache[key] = text.split("\n") if text else []
        return self._cache[key]

    def pack(self, mask: np.ndarray) -> np.ndarray:
        """A bool array over the span → packed mask."""
        return np.packbits(mask)

    def ids_mask(self, ids: np.ndarray) -> np.ndarray:
        """Packed mask with `ids` set (ids outside the span are not posts)."""
        at = ids - self.base
        at = at[(at >= 0) & (at < self.span)]
        if at.size * 64 < self.span:  # few ids (md5:, a rare source:): set their bits directly
            packed = self.full(False)
            np.bitwise_or.at(packed, at >> 3, (0x80 >> (at & 7)).astype(np.uint8))
            return packed
        mask = np.zeros(self.span, dtype=bool)
        mask[at] = True
        return np.packbits(mask)

    def posts_among(self, ids: np.ndarray) -> np.ndarray:
        """Bool per id: is it a post (inside the span and set in `exists`)?"""
        at = ids - self.base
        inside = (at >= 0) & (at < self.span)
        at = np.where(inside, at, 0)
        return inside & ((self.exists()[at >> 3] >> (7 - (at & 7))) & 1).astype(bool)

    def to_ids(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.unpackbits(mask, count=self.span)) + self.base

    def count(self, mask: np.ndarray) -> int:
        """Set bits of a packed mask, padding excluded (a `not` may have set it)."""
        tail = self.span % 8
        if tail and mask.size:
            mask = mask.copy()
            mask[-1] &= (0xFF << (8 - tail)) & 0xFF
        return int(np.bitwise_count(mask).sum())

    def full(self, value: bool) -> np.ndarray:
        return np.full((self.span + 7) // 8, 0xFF if value else 0, dtype=np.uint8)

    def _packed(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = np.frombuffer(self._blob(key), dtype=np.uint8)
        return self._cache[key]

    def _blob(self, key: str) -> bytes:
        return self.conn.execute(f"SELECT data FROM {BITS_TABLE} WHERE name = ?", (key,)).fetchone()[0]


# The last index opened per connection (arrays read once, kept across queries): (conn, Bits).
# A connection cannot be weakly referenced, so only the last few are kept.
_OPEN: list[tuple[sqlite3.Connection, Bits]] = []
_OPEN_MAX = 2


def open_bits(conn: sqlite3.Connection) -> Bits | None:
    """The index when it exists and is current, else None (the caller uses the array engine).
    The same connection gets the same Bits (its arrays already read) while the index's
    generation is unchanged; any write retires it (valid = 0), a rebuild changes generation."""
    try:
        state = dict(conn.execute(f"SELECT key, value FROM {STATE_TABLE}").fetchall())
    except sqlite3.OperationalError:  # not migrated: no such table
        return None
    if state.get("valid") != 1 or state.get("layout") != LAYOUT or not state.get("span"):
        return None
    generation = state.get("generation", 0)
    for at, (held, bits) in enumerate(_OPEN):
        if held is conn:
            if bits.generation == generation and bits.base == state["base"] and bits.span == state["span"]:
                return bits
            del _OPEN[at]
            break
    tags = frozenset(r[0] for r in conn.execute(
        f"SELECT CAST(substr(name, 5) AS INTEGER) FROM {BITS_TABLE} WHERE name LIKE 'tag:%'"))
    itemsize = {name: state[f"itemsize:{name}"] for name in DENSE if f"itemsize:{name}" in state}
    bits = Bits(conn, state["base"], state["span"], state["min_popularity"], tags, itemsize, generation)
    _OPEN.insert(0, (conn, bits))
    del _OPEN[_OPEN_MAX:]
    return bits


def date_bound(text: str) -> int | None:
    """A date: bound (`2020-01-01` or `2020-01-01T10:20:30.123`) as the date column's integer,
    zero-padded; None for any other shape (the caller reads the column instead). Every stored
    created_at is longer than 23 characters (checked at build), so for a bound B and a post's
    value S: S >= B and S > B both hold exactly when code(S) >= code(B), and S < B, S <= B
    when code(S) < code(B); S == B never. `B~` (query_parse's end of a day) is past every value
    that starts with B: code(B) + 1 in B's last digit."""
    if text.endswith("~"):
        code = date_bound(text[:-1])
        return None if code is None else code + 10 ** (17 - (8 if len(text) == 11 else 17))
    if len(text) not in (10, _DATE_LEN) or any(
            text[i] != c for i, c in _DATE_SEPARATORS.items() if i < len(text)):
        return None
    digits = "".join(ch for i, ch in enumerate(text) if i not in _DATE_SEPARATORS)
    if not digits.isascii() or not digits.isdigit():
        return None
    return int(digits.ljust(17, "0"))


def install(db: DanbooruDB) -> None:
    """Tables, invalidation triggers and a first build (migration 0009; idempotent)."""
    conn = db.connection()
    conn.execute(f"CREATE TABLE IF NOT EXISTS {BITS_TABLE} (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (key TEXT PRIMARY KEY, value INTEGER)")
    install_triggers(conn)
    _build(conn)


def install_triggers(conn: sqlite3.Connection) -> None:
    """The invalidation triggers as this layout needs them (a trigger of an older layout, with
    fewer columns, is replaced)."""
    for name, event in _TRIGGERS.items():
        conn.execute(f"DROP TRIGGER IF EXISTS kdata_query_bits_{name}")
        conn.execute(
            f"CREATE TRIGGER kdata_query_bits_{name} {event} "
            f"WHEN (SELECT value FROM {STATE_TABLE} WHERE key = 'valid') = 1 "
            f"BEGIN UPDATE {STATE_TABLE} SET value = 0 WHERE key = 'valid'; END")


def retire(db: DanbooruDB) -> None:
    """Before a bulk write: mark the index stale and drop its triggers, in one transaction.
    Even unfired, each trigger's guard is a lookup per written row (~0.2 µs a relation, a
    third of a bulk relation insert); `refresh_if_stale` puts them back as it rebuilds. No-op
    on a file without migration 0009."""
    if not db.has_table(STATE_TABLE):
        return
    conn = db.connection()
    with db.database.atomic():
        conn.execute(f"INSERT OR REPLACE INTO {STATE_TABLE} (key, value) VALUES ('valid', 0)")
        for name in _TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS kdata_query_bits_{name}")


def refresh_if_stale(db: DanbooruDB) -> bool:
    """Rebuild the index after writes (import, sync), with its triggers (a bulk import dropped
    them: `retire`); True when it was rebuilt. A file without migration 0009 is left alone."""
    conn = db.connection()
    try:
        row = conn.execute(f"SELECT value FROM {STATE_TABLE} WHERE key = 'valid'").fetchone()
    except sqlite3.OperationalError:
        return False
    layout = conn.execute(f"SELECT value FROM {STATE_TABLE} WHERE key = 'layout'").fetchone()
    if row is not None and row[0] == 1 and layout is not None and layout[0] == LAYOUT:
        return False
    with db.database.atomic():
        install_triggers(conn)
        _build(conn)
    return True


def _build(conn: sqlite3.Connection) -> None:
    """Write every array and set the state, valid last (the caller holds one transaction).
    Each array is written as soon as it is complete and dropped: the post columns, then the tag
    counts, then the bitmaps, so the peak is the post columns in their narrow types."""
    lo, hi = conn.execute("SELECT (SELECT min(id) FROM post), (SELECT max(id) FROM post)").fetchone()
    base, span = (0, 0) if hi is None else (lo, hi - lo + 1)
    min_popularity = max(span // BITMAP_SHARE, 1)
    conn.execute(f"DELETE FROM {BITS_TABLE}")
    exts = [r[0] for r in conn.execute("SELECT DISTINCT file_ext FROM post WHERE file_ext IS NOT NULL "
                                       "ORDER BY 1")]
    _put(conn, "vocab:filetype", "\n".join(exts).encode())
    exists, columns = _post_columns(conn, base, span, exts)
    _put(conn, "exists", np.packbits(exists))
    del exists
    state = {"base": base, "span": span, "min_popularity": min_popularity, "layout": LAYOUT,
             "generation": int.from_bytes(os.urandom(6), "big")}
    _put_columns(conn, state, columns)
    del columns
    _put_columns(conn, state, _tag_counts(conn, base, span))
    popular = conn.execute("SELECT id FROM tag WHERE popularity >= ? ORDER BY id",
                           (min_popularity,)).fetchall()
    for (tag_id,) in popular:
        _put(conn, f"tag:{tag_id}", np.packbits(_tag_mask(conn, tag_id, base, span)))
    state["valid"] = 1
    conn.executemany(f"INSERT OR REPLACE INTO {STATE_TABLE} (key, value) VALUES (?, ?)", state.items())


def _post_columns(conn: sqlite3.Connection, base: int, span: int,
                  exts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`exists` and the dense post columns (DENSE_POST, filetype, date where created_at fits),
    read `_BUILD_CHUNK` ids at a time, each column in the narrowest type its values so far fit
    (`_fit`: int8 at first)."""
    ext_case = "CASE file_ext " + " ".join("WHEN ? THEN ?" for _ in exts) + " ELSE 0 END" if exts else "0"
    ext_args = [v for i, e in enumerate(exts) for v in (e, i + 1)]
    exists = np.zeros(span, dtype=bool)
    columns = {name: np.zeros(span, dtype=_NARROW[0]) for name in (*DENSE_POST, "filetype", "date")}
    dates_ok = True
    select = ("SELECT group_concat(id), " + ", ".join(
        f"group_concat(coalesce({c}, 0))" for c in DENSE_POST.values())
        + f", group_concat({ext_case}), group_concat(substr(created_at, 1, {_DATE_LEN}), ''), "
        "min(length(created_at)), count(*) FROM post WHERE id >= ? AND id < ?")
    for lo in range(base, base + span, _BUILD_CHUNK):
        row = conn.execute(select, [*ext_args, lo, lo + _BUILD_CHUNK]).fetchone()
        if not row[-1]:
            continue
        ids = _ints(row[0]) - base
        exists[ids] = True
        for name, text in zip((*DENSE_POST, "filetype"), row[1:-3]):
            _set(columns, name, ids, _ints(text))
        codes = _date_codes(row[-3], row[-1]) if dates_ok and (row[-2] or 0) > _DATE_LEN else None
        if codes is None:
            dates_ok = False
            columns.pop("date", None)
        else:
            _set(columns, "date", ids, codes)
    return exists, columns


def narrowest_int_type(lo: int, hi: int) -> type:
    """The narrowest numpy integer type that holds every value in [lo, hi]."""
    return next(t for t in _NARROW if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)


def _fit(dense: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`dense`, or a wider copy of it when `values` do not fit its type (the types nest, so the
    narrowest type of values its type cannot hold is wider). Widened only as far as the values
    need, so a column ends in the narrowest type of all its values: the type the whole int64
    column narrows to (the zeros of ids that are no post fit every type)."""
    if not values.size:
        return dense
    lo, hi = int(values.min()), int(values.max())
    info = np.iinfo(dense.dtype)
    if info.min <= lo and hi <= info.max:
        return dense
    return dense.astype(narrowest_int_type(lo, hi))


def _set(columns: dict[str, np.ndarray], name: str, at: np.ndarray | slice, values: np.ndarray) -> None:
    columns[name] = _fit(columns[name], values)
    columns[name][at] = values


def _put_columns(conn: sqlite3.Connection, state: dict, columns: dict[str, np.ndarray]) -> None:
    """Write dense columns (already in their narrowest type) and note their item sizes; each
    is dropped from `columns` once written (sqlite copies a blob it is given)."""
    for name in list(columns):
        dense = columns.pop(name)
        _put(conn, f"col:{name}", dense)
        state[f"itemsize:{name}"] = dense.dtype.itemsize


def _tag_mask(conn: sqlite3.Connection, tag_id: int, base: int, span: int) -> np.ndarray:
    """Bool per id of the span: does the post have the tag? Read `_TAG_CHUNK` ids at a time
    from the covering index (tag_id, post_id), so a tag on most posts is never one string.
    Relations of ids outside the span (orphans: no such post) are never read."""
    mask = np.zeros(span, dtype=bool)
    end = base + span
    for lo in range(base, end, _TAG_CHUNK):
        text = conn.execute("SELECT group_concat(post_id) FROM posttagrelation WHERE tag_id = ? "
                            "AND post_id >= ? AND post_id < ?", (tag_id, lo, min(lo + _TAG_CHUNK, end))).fetchone()[0]
        mask[_ints(text) - base] = True
    return mask


def _date_codes(text: str | None, n: int) -> np.ndarray | None:
    """The date column's integers of `n` created_at prefixes (23 characters each, in one
    string), or None when one of them has another shape."""
    if not text or len(text) != n * _DATE_LEN or not text.isascii():
        return None
    chars = np.frombuffer(text.encode(), dtype=np.uint8).reshape(n, _DATE_LEN)
    for at, sep in _DATE_SEPARATORS.items():
        if (chars[:, at] != ord(sep)).any():
            return None
    digits = chars[:, [i for i in range(_DATE_LEN) if i not in _DATE_SEPARATORS]].astype(np.int64) - ord("0")
    if ((digits < 0) | (digits > 9)).any():
        return None
    return digits @ (10 ** np.arange(16, -1, -1, dtype=np.int64))


def _tag_counts(conn: sqlite3.Connection, base: int, span: int) -> dict[str, np.ndarray]:
    """Tags per post, all and per category, over the span (each in its narrowest type, as the
    post columns): the relations read in post id order from the covering index (post_id,
    tag_id) a chunk at a time, the tag types from an array indexed by tag id (a join per
    relation would cost a seek each)."""
    max_tag = conn.execute("SELECT max(id) FROM tag").fetchone()[0] or 0
    types = np.full(max_tag + 1, -1, dtype=np.int8)
    row = conn.execute("SELECT group_concat(id), group_concat(type) FROM tag").fetchone()
    types[_ints(row[0])] = _ints(row[1])
    counts = {name: np.zeros(span, dtype=_NARROW[0]) for name in DENSE_COUNTS}
    after = -1
    while span:
        row = conn.execute(
            "SELECT group_concat(post_id), group_concat(tag_id), max(post_id) FROM (SELECT "
            "post_id, tag_id FROM posttagrelation WHERE post_id > ? ORDER BY post_id LIMIT ?)",
            (after, _COUNT_CHUNK)).fetchone()
        if row[0] is None:
            break
        posts, tags = _ints(row[0]) - base, _ints(row[1])
        keep = (posts >= 0) & (posts < span) & (tags >= 0) & (tags <= max_tag)
        last, full = int(row[2]), len(posts) == _COUNT_CHUNK
        if full:  # a chunk may end inside its last post: leave that post to the next read
            if last - 1 == after:
                raise RuntimeError(f"post {last} has more than {_COUNT_CHUNK} tags")
            keep &= posts != last - base
        _add_counts(counts, posts[keep], types[tags[keep]])
        if not full:
            break
        after = last - 1
    return counts


def _add_counts(counts: dict[str, np.ndarray], posts: np.ndarray, kinds: np.ndarray) -> None:
    """Add one chunk's relations (span offsets, tag types) to the counts: a bincount over the
    chunk's own id range added into that slice (a span-long bincount per chunk would cost a
    span of memory and time each: ~1400 chunks x 6 at 12M posts). Every post's relations are
    in one chunk, so a slice's sum is its posts' final count."""
    if not posts.size:
        return
    first = int(posts.min())
    at = slice(first, int(posts.max()) + 1)
    for name, kind in DENSE_COUNTS.items():
        chosen = posts if kind is None else posts[kinds == kind]
        total = counts[name][at] + np.bincount(chosen - first, minlength=at.stop - first)
        _set(counts, name, at, total)


def _put(conn: sqlite3.Connection, name: str, data: bytes | np.ndarray) -> None:
    """Store a blob; an array is bound as its buffer (no bytes copy of a span-long array)."""
    conn.execute(f"INSERT INTO {BITS_TABLE} (name, data) VALUES (?, ?)", (name, data))


def _ints(text: str | None) -> np.ndarray:
    if not text:
        return np.empty(0, dtype=np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")
