"""Run Danbooru-style tag queries (syntax: `query_parse.py`) against a Danbooru2023 sqlite.

    select_posts(db, "1girl solo -comic rating:g,s score:>10")      # peewee ModelSelect over db.Post
    query_ids(db, "1girl solo order:score", limit=100)              # fast path: list of post ids
    count_posts(db, "1girl -comic")

Two engines give the same answers:

- `select_posts` is plain SQL: one `id IN (SELECT post_id FROM posttagrelation WHERE tag_id = ?)`
  per tag. It composes with peewee (joins, more filters), but SQLite runs each popular tag's
  subquery as a large temporary set, so tag-heavy queries are slow on the full DB.
- `query_ids` / `count_posts` intersect *sorted id arrays* with numpy. Measured on a 1M-post
  sample (benchmarks/bench_query.py), the cost of any plan is dominated by moving ids out of
  SQLite: `fetchall()` of 600k one-int rows takes ~300 ms, while `SELECT group_concat(post_id)`
  over the covering index `posttagrelation(tag_id, post_id)` (migration 0003) plus
  `np.fromstring(sep=",")` takes ~45 ms. So each tag becomes one sorted array in a single row,
  tags (and the ~ group as one step) are applied rarest first, and a tag much more popular than
  the current candidates is *probed* for them instead (`post_id IN json_each(?)`, one index seek
  each). Metatags are one more array from the covering index `post(rating, score, ...)`, or a
  rowid probe of the candidates when they are few; excluded tags are removed last. For
  `1girl solo -comic rating:g,s score:>10` this takes ~150 ms on 1M posts, where SQL EXISTS
  probes driven from the metatag range (300k posts, 3 seeks each) took ~700 ms and the
  IN-subquery SQL ~500 ms.

Pages (`limit` without `order:`, as `kdata serve` and the build plan ask for them) run the same
engine over growing windows of post ids, starting at the cursor, until the page is full: a page
costs a window's worth of ids, not the whole result.

Ordering and cursors: without `order:`, ids are ascending and `after_id` keeps ids > after_id.
With `order:` the cursor is the *last id of the previous page*: the next page starts after that
post in the sort order (keyset paging on `(key, id)`; ties on the key break by id in the same
direction as the key). The cursor post must still exist in the DB. Keys may change between pages
(a sync updates scores), so such a page can skip or repeat a post that moved; ids never do.

All user text reaches SQLite as bound parameters; only fixed column names are formatted in.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from peewee import SQL, ModelSelect

from kohaku_data.db.enums import TagType
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.query_parse import (
    MetaFilter,
    Order,
    ParsedQuery,
    QueryError,
    Range,
    parse_query,
)

__all__ = [
    "ParsedQuery", "QueryError", "count_posts", "parse_query", "post_records", "query_ids",
    "select_posts",
]

# SQL for each metatag / order key: fixed strings only (never user text).
_COLUMN = {
    "id": "id", "score": "score", "favcount": "fav_count", "width": "image_width",
    "height": "image_height", "date": "created_at", "filesize": "file_size",
    "rating": "rating", "filetype": "file_ext",
    "mpixels": "(image_width * image_height / 1000000.0)",
    # Danbooru rounds the ratio to 2 decimals before comparing (ratio:16:9 == ratio:1.78).
    "ratio": "ROUND(CAST(image_width AS REAL) / MAX(image_height, 1), 2)",
}
_KEY_KIND = {"date": "text", "mpixels": "float", "ratio": "float"}  # others are integers
_TAG_SUBQUERY = "SELECT post_id FROM posttagrelation WHERE tag_id"

# Probe a tag for the candidates (one index seek each) instead of reading its whole id list
# when the tag has this many times more posts than there are candidates. Reading costs about
# 70 ns per id, a seek about 1 µs.
_PROBE_RATIO = 12
# Check metatags by probing the candidate ids when at most this many (else scan the index).
_PROBE_MAX = 20_000
# Windows need the covering index (tag_id, post_id) of migration 0003: without it, a window of
# a tag reads the tag's whole relation list, and the full array plan is cheaper.
# Smallest id window of a paged query (below this, per-window overhead dominates).
_MIN_WINDOW = 4096
# Up to this many ids, a window's metatags are checked on the rowid range of `post`.
_ROWID_WINDOW_MAX = 200_000


@dataclass(frozen=True)
class _Tag:
    name: str
    id: int
    popularity: int


@dataclass(frozen=True)
class _Plan:
    """A parsed query with its tags resolved to ids."""

    query: ParsedQuery
    include: tuple[_Tag, ...]
    exclude: tuple[_Tag, ...]
    any_of: tuple[_Tag, ...]


# -- public API -------------------------------------------------------------------------------
def select_posts(db: DanbooruDB, text: str) -> ModelSelect:
    """A peewee query over `db.Post` with the filters and order of `text` applied."""
    plan = _plan(db, text)
    where, params = _where_sql(plan)
    select = db.Post.select()
    if where:
        select = select.where(SQL(where, params))
    return select.order_by(*(SQL(term) for term in _order_terms(plan.query.order)))


def query_ids(
    db: DanbooruDB, text: str, limit: int | None = None, after_id: int | None = None
) -> list[int]:
    """Matching post ids in query order (ascending id without `order:`), paged by `after_id`."""
    if limit is not None and limit < 0:
        raise QueryError(f"limit must be >= 0, got {limit}")
    plan = _plan(db, text)
    conn = db.connection()
    if not plan.query.has_tags and limit is not None:
        # No tags and a LIMIT: SQL can walk an index in order and stop early.
        return _sql_ids(conn, plan, limit, after_id)
    if limit is not None and plan.query.order is None and (plan.include or plan.any_of) \
            and _has_tag_post_index(conn):
        return _windowed_ids(conn, plan, limit, after_id)
    ids, keys = _array_ids(conn, plan, plan.query.order)
    ids = _page(conn, plan.query.order, ids, keys, after_id)
    return (ids if limit is None else ids[:limit]).tolist()


def count_posts(db: DanbooruDB, text: str) -> int:
    """How many posts match (order: is ignored)."""
    plan = _plan(db, text)
    conn = db.connection()
    if not plan.query.has_tags:
        where, params = _where_sql(plan)
        sql = "SELECT COUNT(*) FROM post" + (f" WHERE {where}" if where else "")
        return conn.execute(sql, params).fetchone()[0]
    ids, _ = _array_ids(conn, plan, None)
    return int(ids.size)


# -- tag resolution ---------------------------------------------------------------------------
def _plan(db: DanbooruDB, text: str) -> _Plan:
    query = parse_query(text)
    tags = _resolve(db, query.tag_names)
    return _Plan(
        query,
        include=tuple(tags[n] for n in query.include),
        exclude=tuple(tags[n] for n in query.exclude),
        any_of=tuple(tags[n] for n in query.any_of),
    )


def _resolve(db: DanbooruDB, names: tuple[str, ...]) -> dict[str, _Tag]:
    """Name → tag, following kdata_tag_alias first (as Danbooru rewrites aliased search tags)."""
    if not names:
        return {}
    conn = db.connection()
    aliases = _aliases(db, names)
    canonical = {n: aliases.get(n, n) for n in names}
    wanted = sorted(set(canonical.values()))
    rows = conn.execute(
        f"SELECT name, id, popularity FROM tag WHERE name IN ({_marks(len(wanted))})", wanted
    ).fetchall()
    found = {name: (tag_id, pop) for name, tag_id, pop in rows}
    unknown = [n for n in names if canonical[n] not in found]
    if unknown:
        raise QueryError(_unknown_message(db, unknown))
    return {n: _Tag(canonical[n], *found[canonical[n]]) for n in names}


def _aliases(db: DanbooruDB, names: tuple[str, ...]) -> dict[str, str]:
    if not db.has_table("kdata_tag_alias"):  # file not migrated yet: no aliases
        return {}
    rows = db.connection().execute(
        f"SELECT alias, tag_name FROM kdata_tag_alias WHERE alias IN ({_marks(len(names))})",
        list(names),
    ).fetchall()
    return dict(rows)


def _unknown_message(db: DanbooruDB, unknown: list[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, _suggestion_pool(db, name), n=5, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    colon = any(":" in n for n in unknown)
    tail = (
        "; metatags are id:, score:, favcount:, width:, height:, mpixels:, ratio:, date:, "
        "year:, rating:, filetype:, order:" if colon else ""
    )
    return f"unknown tag{'s' if len(parts) > 1 else ''}: {', '.join(parts)}{tail}"


def _suggestion_pool(db: DanbooruDB, name: str) -> list[str]:
    """Candidates for difflib: the most popular tags plus names sharing the first letters.

    difflib over every tag of the full DB (~1M names) takes seconds; this pool is a few
    thousand names and still catches typos of common tags and of rare tags' endings.
    """
    conn = db.connection()
    pool = [r[0] for r in conn.execute("SELECT name FROM tag ORDER BY popularity DESC LIMIT 5000")]
    prefix = name[:2]
    if prefix:
        # Range scan on the unique name index (LIKE would escape badly and skip the index).
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        pool += [r[0] for r in conn.execute(
            "SELECT name FROM tag WHERE name >= ? AND name < ? LIMIT 20000", (prefix, upper))]
        if db.has_table("kdata_tag_alias"):
            pool += [r[0] for r in conn.execute(
                "SELECT alias FROM kdata_tag_alias WHERE alias >= ? AND alias < ? LIMIT 20000",
                (prefix, upper))]
    return list(dict.fromkeys(pool))


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- SQL building (both engines) --------------------------------------------------------------
def _where_sql(plan: _Plan) -> tuple[str, list]:
    clauses, params = _filter_clauses(plan.query.filters)
    for tag in plan.include:
        clauses.append(f"id IN ({_TAG_SUBQUERY} = ?)")
        params.append(tag.id)
    if plan.any_of:
        clauses.append(f"id IN ({_TAG_SUBQUERY} IN ({_marks(len(plan.any_of))}))")
        params += [t.id for t in plan.any_of]
    for tag in plan.exclude:
        clauses.append(f"id NOT IN ({_TAG_SUBQUERY} = ?)")
        params.append(tag.id)
    return " AND ".join(clauses), params


def _filter_clauses(filters: tuple[MetaFilter, ...]) -> tuple[list[str], list]:
    clauses: list[str] = []
    params: list = []
    for f in filters:
        column = _COLUMN[f.name]
        if f.range is None:
            sql, args = f"{column} IN ({_marks(len(f.values))})", list(f.values)
        else:
            sql, args = _range_sql(column, f.range)
        clauses.append(f"NOT ({sql})" if f.negated else f"({sql})")
        params += args
    return clauses, params


def _range_sql(column: str, rng: Range) -> tuple[str, list]:
    parts, args = [], []
    if rng.lo is not None and rng.lo == rng.hi and rng.lo_inclusive and rng.hi_inclusive:
        return f"{column} = ?", [rng.lo]
    if rng.lo is not None:
        parts.append(f"{column} {'>=' if rng.lo_inclusive else '>'} ?")
        args.append(rng.lo)
    if rng.hi is not None:
        parts.append(f"{column} {'<=' if rng.hi_inclusive else '<'} ?")
        args.append(rng.hi)
    return " AND ".join(parts) or "1", args


def _order_terms(order: Order | None) -> list[str]:
    """ORDER BY terms; ties break by id in the key's direction (Danbooru: `score DESC, id DESC`)."""
    if order is None:
        return ["id ASC"]
    direction = "DESC" if order.descending else "ASC"
    if order.name == "id":
        return [f"id {direction}"]
    return [f"{_COLUMN[order.name]} {direction}", f"id {direction}"]


def _sql_ids(conn: sqlite3.Connection, plan: _Plan, limit: int | None, after_id: int | None):
    """Queries without tags: plain SQL, so SQLite can stop early on an index for LIMIT."""
    where, params = _where_sql(plan)
    clauses = [where] if where else []
    if after_id is not None:
        cursor_sql, cursor_params = _cursor_sql(conn, plan.query.order, after_id)
        clauses.append(cursor_sql)
        params += cursor_params
    sql = "SELECT id FROM post"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY " + ", ".join(_order_terms(plan.query.order))
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [r[0] for r in conn.execute(sql, params)]


def _cursor_sql(conn: sqlite3.Connection, order: Order | None, after_id: int) -> tuple[str, list]:
    if order is None or order.name == "id":
        return ("id < ?" if order and order.descending else "id > ?"), [after_id]
    column = _COLUMN[order.name]
    key = _cursor_key(conn, order, after_id, raw=True)
    op = "<" if order.descending else ">"
    return f"({column} {op} ? OR ({column} = ? AND id {op} ?))", [key, key, after_id]


def _cursor_key(conn: sqlite3.Connection, order: Order, after_id: int, raw: bool = False):
    """The sort key of the cursor post (as text-parsed like the arrays, unless `raw`)."""
    column = _COLUMN[order.name]
    fn = "" if raw else "group_concat"
    row = conn.execute(f"SELECT {fn}({column}) FROM post WHERE id = ?", (after_id,)).fetchone()
    if row is None or row[0] is None:
        raise QueryError(
            f"after_id {after_id} is not a post in this database: with order:, pass the last id "
            "of the previous page as the cursor"
        )
    return row[0] if raw else _parse_list(row[0], order.name)[0]


# -- array engine -----------------------------------------------------------------------------
_Span = tuple[int, int]  # post ids lo <= id < hi


def _has_tag_post_index(conn: sqlite3.Connection) -> bool:
    """An index on posttagrelation leading with (tag_id, post_id) exists (migration 0003)."""
    for row in conn.execute("PRAGMA index_list(posttagrelation)").fetchall():
        name = row[1].replace('"', '""')
        columns = [r[2] for r in conn.execute(f'PRAGMA index_info("{name}")')]
        if columns[:2] == ["tag_id", "post_id"]:
            return True
    return False


def _windowed_ids(conn: sqlite3.Connection, plan: _Plan, limit: int, after_id: int | None) -> list[int]:
    """A page in id order: run the array engine over growing id windows until `limit` ids are
    found, so a page of a popular query costs a window's worth of ids, not the whole result
    (`1girl solo` on 1M posts: ~0.2 ms per page of 100 instead of ~100 ms)."""
    # Two subqueries: SQLite answers a lone min() or max() from the rowid b-tree at once, but
    # scans the table for `SELECT min(id), max(id)`.
    lo_id, hi_id = conn.execute("SELECT (SELECT min(id) FROM post), (SELECT max(id) FROM post)").fetchone()
    if hi_id is None or limit == 0:
        return []
    lo = max(lo_id, after_id + 1 if after_id is not None else lo_id)
    window = _first_window(plan, limit, hi_id - lo_id + 1)
    found: list[int] = []
    while lo <= hi_id and len(found) < limit:
        ids, _ = _array_ids(conn, plan, None, (lo, lo + window))
        found.extend(ids[: limit - len(found)].tolist())
        lo += window
        window *= 4  # the estimate was too hopeful: widen fast (few windows even when sparse)
    return found


def _first_window(plan: _Plan, limit: int, id_span: int) -> int:
    """Ids to scan for about 2x `limit` matches, assuming tags are independent."""
    share = 1.0
    for tag in plan.include:
        share *= min(1.0, tag.popularity / id_span)
    if plan.any_of:
        share *= min(1.0, sum(t.popularity for t in plan.any_of) / id_span)
    share *= 0.5 ** len(plan.query.filters)
    return max(_MIN_WINDOW, int(2 * limit / max(share, 1e-9)))


def _array_ids(
    conn: sqlite3.Connection, plan: _Plan, order: Order | None, span: _Span | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted unique ids matching the whole query (within `span` when given), and their sort
    keys when `order` needs them."""
    ids = _positive_tags(conn, plan, span)
    need_key = order is not None and order.name != "id"
    keys = None
    if ids is None or plan.query.filters or need_key:
        ids, keys = _apply_meta(conn, plan.query.filters, order if need_key else None, ids, span)
    for tag in sorted(plan.exclude, key=lambda t: t.popularity):
        if ids.size == 0:
            break
        drop = _tag_ids(conn, tag, within=ids, span=span)
        keep = ~np.isin(ids, drop, assume_unique=True)
        ids = ids[keep]
        keys = None if keys is None else keys[keep]
    return ids, keys


def _positive_tags(conn: sqlite3.Connection, plan: _Plan, span: _Span | None = None) -> np.ndarray | None:
    """Ids having every include tag and one of the ~ tags; None when there are no such tags.

    Each include tag, and the ~ group as a whole (its size is at most the sum of its tags'),
    is one step; steps run smallest first so later, popular tags can be probed instead of read.
    """
    steps = [(t.popularity, (t,)) for t in plan.include]
    if plan.any_of:
        steps.append((sum(t.popularity for t in plan.any_of), plan.any_of))
    ids: np.ndarray | None = None
    for _, tags in sorted(steps, key=lambda step: step[0]):
        parts = [_tag_ids(conn, t, within=ids, span=span) for t in tags]
        found = parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))
        ids = found if ids is None else np.intersect1d(ids, found, assume_unique=True)
        if ids.size == 0:
            break
    return ids


def _tag_ids(
    conn: sqlite3.Connection, tag: _Tag, within: np.ndarray | None, span: _Span | None = None
) -> np.ndarray:
    """Sorted unique post ids of `tag` (only those in `within` when probing is cheaper; only
    those in `span` when given)."""
    if within is not None and tag.popularity > _PROBE_RATIO * within.size:
        sql = f"{_TAG_SUBQUERY} = ? AND post_id IN (SELECT value FROM json_each(?))"
        args: tuple = (tag.id, json.dumps(within.tolist()))
    else:
        sql, args = f"{_TAG_SUBQUERY} = ?", (tag.id,)
    if span is not None:  # a range of the covering index (tag_id, post_id)
        sql += " AND post_id >= ? AND post_id < ?"
        args += span
    text = conn.execute(f"SELECT group_concat(post_id) FROM ({sql})", args).fetchone()[0]
    return _sorted_unique(_parse_list(text, "id"))


def _apply_meta(
    conn: sqlite3.Connection,
    filters: tuple[MetaFilter, ...],
    order: Order | None,
    ids: np.ndarray | None,
    span: _Span | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Keep the ids passing the metatags (all posts, or those in `span`, when `ids` is None),
    with sort keys."""
    clauses, params = _filter_clauses(filters)
    source = "post"
    if span is not None:
        clauses.append("id >= ? AND id < ?")
        params += span
        if span[1] - span[0] <= _ROWID_WINDOW_MAX:
            source = "post NOT INDEXED"  # a short rowid range beats a metatag index range
    if ids is not None and ids.size <= _PROBE_MAX:
        # Few candidates: look each up by rowid. NOT INDEXED stops SQLite from preferring a
        # range of kdata_post_meta (which can be far longer than the candidate list).
        source = "post NOT INDEXED"
        clauses.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(ids.tolist()))
    key_sql = f", group_concat({_COLUMN[order.name]})" if order else ""
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    row = conn.execute(f"SELECT group_concat(id){key_sql} FROM {source}{where}", params).fetchone()
    found = _parse_list(row[0], "id")
    # The covering index yields ids in index order (rating, score, ...), not id order. Ids are
    # unique, so an unstable sort is exact (and several times faster than a stable one).
    if not order:
        found = np.sort(found)
        return (found if ids is None else np.intersect1d(found, ids, assume_unique=True)), None
    keys = _parse_list(row[1], order.name)
    sort = np.argsort(found)
    found, keys = found[sort], keys[sort]
    if ids is None:
        return found, keys
    at = np.minimum(np.searchsorted(found, ids), max(found.size - 1, 0))
    hit = found[at] == ids if found.size else np.zeros(ids.size, dtype=bool)
    return ids[hit], keys[at[hit]]


def _parse_list(text: str | None, key: str) -> np.ndarray:
    """A group_concat() result → numpy array (parsing one string beats fetching many rows)."""
    kind = _KEY_KIND.get(key, "int")
    if not text:
        return np.empty(0, dtype=object if kind == "text" else np.int64)
    if kind == "text":  # created_at strings hold no commas
        return np.array(text.split(","), dtype=object)
    return np.fromstring(text, dtype=np.float64 if kind == "float" else np.int64, sep=",")


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    ids = np.sort(ids)  # already sorted from the covering index: this is a quick check pass
    if ids.size > 1 and bool((ids[1:] == ids[:-1]).any()):
        ids = np.unique(ids)  # a post listing a tag twice must not break assume_unique
    return ids


def _page(
    conn: sqlite3.Connection,
    order: Order | None,
    ids: np.ndarray,
    keys: np.ndarray | None,
    after_id: int | None,
) -> np.ndarray:
    """Order `ids` (ascending already) by the query's order and drop everything up to the cursor."""
    descending = order is not None and order.descending
    if keys is None:  # order by id
        if after_id is not None:
            ids = ids[ids < after_id] if descending else ids[ids > after_id]
        return ids[::-1] if descending else ids
    if after_id is not None:
        key = _cursor_key(conn, order, after_id)
        if descending:
            mask = (keys < key) | ((keys == key) & (ids < after_id))
        else:
            mask = (keys > key) | ((keys == key) & (ids > after_id))
        ids, keys = ids[mask], keys[mask]
    # ids are ascending, so a stable sort on the key gives (key asc, id asc); reversed, that is
    # (key desc, id desc), Danbooru's tie-break for descending orders.
    sort = np.argsort(keys, kind="stable")
    ids = ids[sort]
    return ids[::-1] if descending else ids


# -- records ----------------------------------------------------------------------------------
def post_records(db: DanbooruDB, ids: list[int], chunk: int = 500) -> Iterator[dict]:
    """Post rows (as stored) with `tags`: {category: [names, alphabetical]}, in `ids` order."""
    conn = db.connection()
    columns = db.columns("post")
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        marks = _marks(len(part))
        rows = conn.execute(
            f"SELECT {', '.join(columns)} FROM post WHERE id IN ({marks})", part
        ).fetchall()
        by_id = {row[0]: dict(zip(columns, row)) for row in rows}
        tags = conn.execute(
            "SELECT r.post_id, t.type, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"
            f" WHERE r.post_id IN ({marks}) ORDER BY t.name",
            part,
        ).fetchall()
        for record in by_id.values():
            record["tags"] = {t.category_name: [] for t in TagType}
        for post_id, kind, name in tags:
            by_id[post_id]["tags"][TagType(kind).category_name].append(name)
        yield from (by_id[i] for i in part if i in by_id)
