"""Run Danbooru-style tag queries (syntax: `query_parse.py`) against a Danbooru2023 sqlite.

    select_posts(db, "1girl solo -comic rating:g,s score:>10")      # peewee ModelSelect over db.Post
    query_ids(db, "(cat_ears or dog_ears) *_hair order:score", limit=100)   # fast path: post ids
    count_posts(db, "1girl -comic")

Three engines give the same answers:

- `select_posts` is plain SQL: one `id IN (SELECT post_id FROM posttagrelation WHERE tag_id = ?)`
  per tag, joined by the query's AND/OR/NOT. It composes with peewee (joins, more filters), but
  SQLite runs each popular tag's subquery as a large temporary set, so tag-heavy queries are
  slow on the full DB.
- `query_ids` / `count_posts` evaluate the query tree (`query_plan.py`) over *sorted id arrays*
  with numpy. Measured on a 1M-post sample (benchmarks/bench_query.py), the cost of any plan is
  dominated by moving ids out of SQLite: `fetchall()` of 600k one-int rows takes ~300 ms, while
  `SELECT group_concat(post_id)` over the covering index `posttagrelation(tag_id, post_id)`
  (migration 0003) plus `np.fromstring(sep=",")` takes ~45 ms. So each tag becomes one sorted
  array in a single row. In a conjunction the parts run smallest first and each later part only
  has to answer for the current candidates: a tag much more popular than the candidates is
  *probed* for them (`post_id IN json_each(?)`, one index seek each) instead of read, metatags
  are one array from the covering index `post(rating, score, ...)` or a rowid probe of the
  candidates when they are few, and negated parts are removed last, probed the same way.
  An `or` is the union of its parts; a wildcard or an `or` of plain tags is one union read.
- on a migrated file, a query whose every part is big (at least the posts of a tag that has a
  bitmap) runs on the bitmap index of migration 0009 instead (`query_bits.py`): packed masks
  over the id span, and/or/not in numpy, dense columns for the metatags (rating, score, fav
  count, file size, votes, size, pixiv id, file type, creation time, tag counts, is:/has: flags;
  others such as source: or md5: are one read of their own index), so the hidden-deleted check
  and a metatag count never read a post row.
  `1girl solo -comic rating:g,s score:>10` on 1M posts: ~10 ms instead of ~400 ms. A query
  with a rare part stays on arrays (read the few ids, probe the rest).

Pages (`limit`), as `kdata serve` and the build plan ask for them, never compute the whole
result when they need not:

- without `order:`, the same engine runs over growing windows of post ids, starting at the
  cursor, until the page is full: a page costs a window's worth of ids;
- with `order:score|favcount|date|id` on a migrated file, the engine walks that order's index
  (migration 0003) in growing chunks from the cursor and keeps the chunk's posts that match
  (all tags probed): `long_hair order:score` reads a few hundred index entries, not the 34% of
  posts that have the tag. The walk is chosen only when the query is expected to match often
  enough (at most `_WALK_MAX` index entries per page), and gives up for the full plan if that
  estimate was wrong;
- otherwise the matches are ordered by a top-k (`np.partition`), not a sort of every match.

Ordering and cursors: without `order:`, ids are ascending and `after_id` keeps ids > after_id.
With `order:` the cursor is the *last id of the previous page*: the next page starts after that
post in the sort order (keyset paging on `(key, id)`; ties on the key break by id in the same
direction as the key). The cursor post must still exist in the DB. Keys may change between pages
(a sync updates scores), so such a page can skip or repeat a post that moved; ids never do.

All user text reaches SQLite as bound parameters; only fixed column names are formatted in.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import numpy as np
from peewee import SQL, ModelSelect

from kohaku_data.db.enums import TagType
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.query_bits import DENSE, FLAG_BITS, FLAG_NOT, NOT_KEYS, Bits, date_bound, open_bits
from kohaku_data.db.query_parse import (
    And, MetaFilter, Not, Or, Order, ParsedQuery, QueryError, parse_query,
)
from kohaku_data.db.query_plan import (
    COLUMN,
    TAG_SUBQUERY,
    Plan,
    SqlLeaf,
    Tag,
    TagLeaf,
    estimate,
    make_plan,
    marks,
    random_keys,
    random_sql,
    tree_sql,
)

__all__ = [
    "ParsedQuery", "QueryError", "count_posts", "parse_query", "post_records", "query_ids",
    "select_posts",
]

_KEY_KIND = {"date": "text", "change": "text", "md5": "text", "mpixels": "float",
             "ratio": "float"}  # others are integers

# Probe a tag for the candidates (one index seek each) instead of reading its whole id list
# when the tag has this many times more posts than there are candidates. Reading costs about
# 70 ns per id, a seek about 1 µs.
_PROBE_RATIO = 12
# Check metatags by probing the candidate ids when at most this many (else scan the index).
_PROBE_MAX = 20_000
# Metatags with dense columns (bitmap index) are gathered for more candidates than this (a
# rowid probe of a few is cheaper than reading a column the first time).
_GATHER_MIN = 1_000
# Windows need the covering index (tag_id, post_id) of migration 0003: without it, a window of
# a tag reads the tag's whole relation list, and the full array plan is cheaper.
# Smallest id window of a paged query (below this, per-window overhead dominates).
_MIN_WINDOW = 4096
# Up to this many ids, a window's metatags are checked on the rowid range of `post`.
_ROWID_WINDOW_MAX = 200_000
# An ordered page walks the order's index when it expects to read at most this many entries
# (each costs a probe per tag, ~1 µs), and gives up for the full plan after 4x as many.
_WALK_MAX = 50_000
_MIN_CHUNK = 256
# A probe for a union of more tags than this goes by post (all its tags) rather than by tag.
_UNION_BY_POST = 4
# Order keys whose index (migration 0003) a page can walk; `id` walks the table itself.
_WALK_INDEX = {"score": "score", "favcount": "fav_count", "date": "created_at",
               "upvotes": "up_score"}

_Span = tuple[int, int]  # post ids lo <= id < hi


# -- public API -------------------------------------------------------------------------------
def select_posts(db: DanbooruDB, text: str, strict: bool = True) -> ModelSelect:
    """A peewee query over `db.Post` with the filters and order of `text` applied (limit: and
    random: are whole-result settings: use query_ids for those)."""
    plan = make_plan(db, text, strict)
    if plan.query.limit is not None or plan.query.sample is not None:
        raise QueryError("limit: and random: are not supported by select_posts; use query_ids")
    where, params = tree_sql(plan.tree)
    # Aliased as its own name: peewee would call the table `t1`, and the metatags' subqueries
    # (tag counts, parents) name `post`.
    select = db.Post.alias("post").select()
    if where != "1":
        select = select.where(SQL(where, params))
    order = plan.query.order
    if order is not None and order.name == "random":
        sql, args = random_sql(plan.query.seed)
        return select.order_by(SQL(f"{sql} ASC", args), SQL("id ASC"))
    return select.order_by(*(SQL(term) for term in _order_terms(order)))


def query_ids(
    db: DanbooruDB, text: str, limit: int | None = None, after_id: int | None = None,
    strict: bool = True,
) -> list[int]:
    """Matching post ids in query order (ascending id without `order:`), paged by `after_id`.
    `strict=False`: a name that is neither a tag nor an alias matches nothing (no error)."""
    if limit is not None and limit < 0:
        raise QueryError(f"limit must be >= 0, got {limit}")
    plan = make_plan(db, text, strict)
    conn = db.connection()
    query = plan.query
    if query.limit is None and query.sample is None:
        return _ids(conn, plan, limit, after_id)
    # limit:N / random:N cap the whole result; pages (after_id) are taken from that list.
    if query.sample is not None:
        ids = _sampled(conn, plan)
    else:
        ids = np.asarray(_ids(conn, plan, query.limit, None), dtype=np.int64)
    if query.limit is not None:
        ids = ids[:query.limit]
    if after_id is not None:
        at = np.flatnonzero(ids == after_id)
        if not at.size:
            raise QueryError(f"after_id {after_id} is not in this query's result: pass the last "
                             "id of the previous page as the cursor")
        ids = ids[at[0] + 1:]
    return (ids if limit is None else ids[:limit]).tolist()


def _sampled(conn: sqlite3.Connection, plan: Plan) -> np.ndarray:
    """random:N: the N matches first in the seeded random order, then in the query's order."""
    bits = _bits_for(conn, plan)
    ids = _eval(conn, plan.tree, None, None) if bits is None else bits.to_ids(_bits_eval(bits, plan.tree))
    keys = random_keys(ids, plan.query.seed)
    n = plan.query.sample
    if n < ids.size:
        pick = np.lexsort((ids, keys))[:n]
        ids = np.sort(ids[pick])
    order = plan.query.order
    if order is None or order.name == "id":
        return ids[::-1] if order is not None and order.descending else ids
    ids, keys = _keys(conn, order, ids, bits, plan.query.seed)
    return _page(conn, order, ids, keys, None)


def _ids(conn: sqlite3.Connection, plan: Plan, limit: int | None, after_id: int | None) -> list[int]:
    order = plan.query.order
    if not plan.has_tags and limit is not None and not (order and order.name == "random"):
        # No tags and a LIMIT: SQL can walk an index in order and stop early.
        return _sql_ids(conn, plan, limit, after_id)
    if limit is not None and order is None and _has_index(conn, "posttagrelation", ("tag_id", "post_id")):
        return _windowed_ids(conn, plan, limit, after_id)
    if limit is not None and order is not None and _walkable(conn, plan, order, limit):
        walked = _walked_ids(conn, plan, order, limit, after_id)
        if walked is not None:
            return walked
    bits = _bits_for(conn, plan)
    ids = _eval(conn, plan.tree, None, None) if bits is None else bits.to_ids(_bits_eval(bits, plan.tree))
    keys = None
    if order is not None and order.name != "id":
        ids, keys = _keys(conn, order, ids, bits, plan.query.seed)
    ids = _page(conn, order, ids, keys, after_id, limit, plan.query.seed)
    return (ids if limit is None else ids[:limit]).tolist()


def count_posts(db: DanbooruDB, text: str, strict: bool = True) -> int:
    """How many posts match (order: is ignored; limit: and random: cap the count, as they cap
    what query_ids returns)."""
    plan = make_plan(db, text, strict)
    conn = db.connection()
    caps = [c for c in (plan.query.limit, plan.query.sample) if c is not None]
    return min([_count(conn, plan), *caps])


def _count(conn: sqlite3.Connection, plan: Plan) -> int:
    # With the bitmap index, metatags without a dense column (source:, md5:, ...) are one read
    # of their own index, and the hidden-deleted check a bit mask, never a row read per post.
    bits = _bits_for(conn, plan)
    if bits is not None:
        return bits.count(_bits_eval(bits, plan.tree))
    if not plan.has_tags:
        where, params = tree_sql(plan.tree)
        sql = "SELECT COUNT(*) FROM post" + (f" WHERE {where}" if where != "1" else "")
        return conn.execute(sql, params).fetchone()[0]
    return int(_eval(conn, plan.tree, None, None).size)


def _all_dense(node) -> bool:
    """Every metatag of a bound tree without tags has a dense column of the bitmap index."""
    if isinstance(node, SqlLeaf):
        return node.expr is not None and _dense_only(node.expr)
    if isinstance(node, Not):
        return _all_dense(node.child)
    return all(_all_dense(c) for c in node.children)


# -- SQL paths --------------------------------------------------------------------------------
def _order_terms(order: Order | None) -> list[str]:
    """ORDER BY terms; ties break by id in the key's direction (Danbooru: `score DESC, id DESC`)."""
    if order is None:
        return ["id ASC"]
    direction = "DESC" if order.descending else "ASC"
    if order.name == "id":
        return [f"id {direction}"]
    return [f"{COLUMN[order.name]} {direction}", f"id {direction}"]


def _sql_ids(conn: sqlite3.Connection, plan: Plan, limit: int, after_id: int | None) -> list[int]:
    """Queries without tags: plain SQL, so SQLite can stop early on an index for LIMIT."""
    where, params = tree_sql(plan.tree)
    clauses = [where] if where != "1" else []
    if after_id is not None:
        cursor_sql, cursor_params = _cursor_sql(conn, plan.query.order, after_id)
        clauses.append(cursor_sql)
        params += cursor_params
    sql = "SELECT id FROM post"
    if clauses:
        sql += " WHERE " + " AND ".join(f"({c})" for c in clauses)
    sql += " ORDER BY " + ", ".join(_order_terms(plan.query.order)) + " LIMIT ?"
    return [r[0] for r in conn.execute(sql, [*params, limit])]


def _cursor_sql(conn: sqlite3.Connection, order: Order | None, after_id: int) -> tuple[str, list]:
    if order is None or order.name == "id":
        return ("id < ?" if order and order.descending else "id > ?"), [after_id]
    column = COLUMN[order.name]
    key = _cursor_key(conn, order, after_id, raw=True)
    op = "<" if order.descending else ">"
    return f"{column} {op} ? OR ({column} = ? AND id {op} ?)", [key, key, after_id]


def _cursor_key(conn: sqlite3.Connection, order: Order, after_id: int, raw: bool = False,
                seed: int = 0):
    """The sort key of the cursor post (as text-parsed like the arrays, unless `raw`)."""
    if order.name == "random":
        if conn.execute("SELECT 1 FROM post WHERE id = ?", (after_id,)).fetchone() is None:
            raise QueryError(f"after_id {after_id} is not a post in this database: with order:, "
                             "pass the last id of the previous page as the cursor")
        return random_keys(np.array([after_id], dtype=np.int64), seed)[0]
    column = COLUMN[order.name]
    fn = "" if raw else "group_concat"
    row = conn.execute(f"SELECT {fn}({column}) FROM post WHERE id = ?", (after_id,)).fetchone()
    if row is None or row[0] is None:
        raise QueryError(
            f"after_id {after_id} is not a post in this database: with order:, pass the last id "
            "of the previous page as the cursor"
        )
    return row[0] if raw else _parse_list(row[0], order.name)[0]


def _has_index(conn: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> bool:
    """An index on `table` leading with `columns` exists."""
    for row in conn.execute(f"PRAGMA index_list({table})").fetchall():
        name = row[1].replace('"', '""')
        have = [r[2] for r in conn.execute(f'PRAGMA index_info("{name}")')]
        if tuple(have[:len(columns)]) == columns:
            return True
    return False


# -- array engine -----------------------------------------------------------------------------
def _eval(conn: sqlite3.Connection, node, within: np.ndarray | None, span: _Span | None) -> np.ndarray:
    """Sorted unique ids matching `node`: among `within` when given, within `span` when given."""
    if within is not None and within.size == 0:
        return within
    if isinstance(node, TagLeaf):
        return _tag_ids(conn, node.tags, within, span)
    if isinstance(node, SqlLeaf):
        return _sql_leaf_ids(conn, node, within, span)
    if isinstance(node, Not):
        base = within if within is not None else _universe(conn, span)
        return _minus(base, _eval(conn, node.child, base, span))
    if isinstance(node, Or):
        parts = [_eval(conn, child, within, span) for child in node.children]
        return _union(parts)
    return _eval_and(conn, node, within, span)


def _eval_and(conn: sqlite3.Connection, node: And, within: np.ndarray | None, span: _Span | None):
    """Positive parts smallest first (each only checks the survivors), then negated parts."""
    positives = [c for c in node.children if not isinstance(c, Not)]
    negatives = [c.child for c in node.children if isinstance(c, Not)]
    ids = within
    for child in sorted(positives, key=_rank):
        ids = _eval(conn, child, ids, span)
        if ids.size == 0:
            return ids
    if ids is None:
        ids = _universe(conn, span)
    for child in sorted(negatives, key=_rank):
        if ids.size == 0:
            break
        ids = _minus(ids, _eval(conn, child, ids, span))
    return ids


def _rank(node) -> tuple[int, float]:
    """Conjunction order: tags and groups by expected size; metatags after them (one index
    scan or rowid probe of the survivors) unless they bound the ids (`id:1,2,3`)."""
    if isinstance(node, SqlLeaf):
        return (0 if node.bounded else 1, node.estimate)
    return (0, _size(node))


def _size(node) -> float:
    """An upper bound on the matches of `node`, good enough to order a conjunction's parts."""
    if isinstance(node, (TagLeaf, SqlLeaf)):
        return node.estimate
    if isinstance(node, Or):
        return sum(map(_size, node.children))
    if isinstance(node, And):
        return min((_size(c) for c in node.children if not isinstance(c, Not)), default=float("inf"))
    return float("inf")


def _tag_ids(conn: sqlite3.Connection, tags: tuple[Tag, ...], within: np.ndarray | None,
             span: _Span | None) -> np.ndarray:
    """Posts having any of `tags`: probed for `within` when the tags are much more popular
    than the candidates, else read whole from the covering index (one union read)."""
    if not tags:
        return np.empty(0, dtype=np.int64)
    popularity = sum(t.popularity for t in tags)
    if len(tags) == 1:
        sql, args = f"{TAG_SUBQUERY} = ?", (tags[0].id,)
    else:
        sql, args = f"{TAG_SUBQUERY} IN ({marks(len(tags))})", tuple(t.id for t in tags)
    by_post = len(tags) > _UNION_BY_POST
    # A probe costs a seek per candidate and tag, or (by post) one seek and ~25 entries read.
    seeks = 3 * within.size if by_post and within is not None else len(tags) * (
        0 if within is None else within.size)
    probe = within is not None and popularity > _PROBE_RATIO * seeks
    if probe:
        if by_post:
            # Many tags (a wildcard): one seek per candidate in (post_id, tag_id) reads all its
            # ~25 tags, cheaper than a seek per candidate and tag; `+tag_id` keeps SQLite off
            # the tag index.
            sql = sql.replace("WHERE tag_id", "WHERE +tag_id", 1)
        sql += " AND post_id IN (SELECT value FROM json_each(?))"
        args += (json.dumps(within.tolist()),)
    if span is not None:  # a range of the covering index (tag_id, post_id)
        sql += " AND post_id >= ? AND post_id < ?"
        args += span
    ids = _sorted_unique(_read_ids(conn, sql, args))
    if within is None or probe:
        return ids
    return np.intersect1d(ids, within, assume_unique=True)


def _read_ids(conn: sqlite3.Connection, sql: str, args: tuple) -> np.ndarray:
    """The post ids a `SELECT post_id ...` yields, as one array (one group_concat row)."""
    return _parse_list(conn.execute(f"SELECT group_concat(post_id) FROM ({sql})", args).fetchone()[0], "id")


def _sql_leaf_ids(conn: sqlite3.Connection, leaf: SqlLeaf, within: np.ndarray | None,
                  span: _Span | None) -> np.ndarray:
    """Posts passing a metatag condition: a rowid probe of few candidates; for many, the
    dense columns of the bitmap index when it is current (a gather, no scan), else an index
    scan of every post (`hatsune_miku* rating:g,s` at 7.8M: 80k candidates, 5M scanned)."""
    if (within is None or within.size > _GATHER_MIN) and leaf.expr is not None \
            and _dense_only(leaf.expr):
        found = _dense_leaf_ids(conn, leaf, within, span)
        if found is not None:
            return found
    clauses, params = [f"({leaf.where})"], list(leaf.params)
    source = "post"
    if span is not None:
        clauses.append("id >= ? AND id < ?")
        params += span
        if span[1] - span[0] <= _ROWID_WINDOW_MAX:
            source = "post NOT INDEXED"  # a short rowid range beats a metatag index range
    if within is not None and within.size <= _PROBE_MAX:
        # Few candidates: look each up by rowid. NOT INDEXED stops SQLite from preferring a
        # range of kdata_post_meta (which can be far longer than the candidate list).
        source = "post NOT INDEXED"
        clauses.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(within.tolist()))
    where = " AND ".join(clauses)
    text = conn.execute(f"SELECT group_concat(id) FROM {source} WHERE {where}", params).fetchone()[0]
    # The covering index yields ids in index order (rating, score, ...), not id order. Ids are
    # unique, so an unstable sort is exact (and several times faster than a stable one).
    found = np.sort(_parse_list(text, "id"))
    return found if within is None else np.intersect1d(found, within, assume_unique=True)


def _dense_leaf_ids(conn: sqlite3.Connection, leaf: SqlLeaf, within: np.ndarray | None,
                    span: _Span | None) -> np.ndarray | None:
    """A metatag leaf from the dense columns: a gather for the candidates, a compare over the
    span (or the window) otherwise; None without a current index or a column it needs."""
    bits = open_bits(conn)
    if bits is None:
        return None
    if within is None and span is None:
        mask = _bits_meta(bits, leaf.expr)
        return None if mask is None else bits.to_ids(bits.pack(mask) & bits.exists())
    if within is None:
        lo, hi = max(span[0], bits.base), min(span[1], bits.base + bits.span)
        within = np.arange(lo, max(lo, hi), dtype=np.int64)
    mask = _bits_meta(bits, leaf.expr, within)
    return None if mask is None else within[mask & bits.posts_among(within)]


def _universe(conn: sqlite3.Connection, span: _Span | None) -> np.ndarray:
    """Every post id (in `span`): what a query of only negated parts starts from."""
    if span is None:
        text = conn.execute("SELECT group_concat(id) FROM post").fetchone()[0]
        return np.sort(_parse_list(text, "id"))
    text = conn.execute("SELECT group_concat(id) FROM post WHERE id >= ? AND id < ?", span).fetchone()[0]
    return _parse_list(text, "id")  # a rowid range comes out in id order


def _minus(ids: np.ndarray, drop: np.ndarray) -> np.ndarray:
    return ids[~np.isin(ids, drop, assume_unique=True)] if drop.size else ids


def _union(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.size]
    if not parts:
        return np.empty(0, dtype=np.int64)
    return parts[0] if len(parts) == 1 else _sorted_unique(np.concatenate(parts))


def _keys(conn: sqlite3.Connection, order: Order, ids: np.ndarray,
          bits: Bits | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids that are posts, their sort keys): from the bitmap index's dense column, else rowid
    probes for few ids, else one index scan; order:random's keys are a hash of the id."""
    if order.name == "random":
        return ids, random_keys(ids, seed)
    column = COLUMN[order.name]
    if bits is not None and order.name in DENSE and order.name not in NOT_KEYS and bits.has(order.name):
        # ids came from the index: all are posts
        return ids, bits.column(order.name)[ids - bits.base].astype(np.int64)
    if ids.size <= _PROBE_MAX:
        row = conn.execute(
            f"SELECT group_concat(id), group_concat({column}) FROM post NOT INDEXED "
            "WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids.tolist()),)).fetchone()
    else:
        row = conn.execute(f"SELECT group_concat(id), group_concat({column}) FROM post").fetchone()
    found, keys = _parse_list(row[0], "id"), _parse_list(row[1], order.name)
    sort = np.argsort(found)
    found, keys = found[sort], keys[sort]
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
    if ids.size > 1:
        repeat = ids[1:] == ids[:-1]  # a post listing a tag twice must not break assume_unique
        if repeat.any():
            ids = ids[np.concatenate(([True], ~repeat))]
    return ids


# -- bitmap engine (migration 0009) ------------------------------------------------------------
def _bits_for(conn: sqlite3.Connection, plan: Plan) -> Bits | None:
    """The bitmap index, when it is current and the query is big enough to want it: every part
    of the conjunction matches at least as many posts as a tag that has a bitmap (a query with
    a rare tag is cheaper on arrays: read the few ids, probe the rest)."""
    bits = open_bits(conn)
    if bits is None or _size(plan.tree) < bits.min_popularity:
        return None
    return bits


def _bits_eval(bits: Bits, node) -> np.ndarray:
    """Packed mask over the index's id span: the posts matching `node`. Cached arrays are
    shared (read-only), so every operation here makes a new array."""
    if isinstance(node, TagLeaf):
        return _bits_tags(bits, node.tags)
    if isinstance(node, SqlLeaf):
        key = ("leaf", node.expr)
        if isinstance(node.expr, MetaFilter) and node.expr.name == "is" and key in bits._cache:
            return bits._cache[key]  # the hidden-deleted check of every query, packed once
        mask = _bits_meta(bits, node.expr)
        if mask is None:  # a metatag without a dense column (md5:, source:, ...): read it
            return bits.ids_mask(_sql_leaf_ids(bits.conn, node, None, None))
        packed = bits.pack(mask) & bits.exists()
        if isinstance(node.expr, MetaFilter) and node.expr.name == "is":
            packed.flags.writeable = False  # shared: every operation makes a new array
            bits._cache[key] = packed
        return packed
    if isinstance(node, Not):
        return bits.exists() & ~_bits_eval(bits, node.child)
    if isinstance(node, Or):
        return _reduce(np.bitwise_or, [_bits_eval(bits, c) for c in node.children], bits.full(False))
    # Metatags without a dense column run last, on the posts the rest left (a rowid probe
    # when those are few): `highres -1boy width:>=1024` never scans width over every post.
    late = [c for c in node.children if isinstance(c, SqlLeaf) and not _dense_only(c.expr)]
    positives = [c for c in node.children if not isinstance(c, Not) and c not in late]
    mask = _reduce(np.bitwise_and, [_bits_eval(bits, c) for c in positives], bits.exists())
    for child in (c.child for c in node.children if isinstance(c, Not)):
        mask = mask & ~_bits_eval(bits, child)
    for leaf in late:
        if bits.count(mask) > min(_PROBE_MAX, bits.span // 64):  # many: the leaf alone, from its index
            mask = mask & bits.ids_mask(_sql_leaf_ids(bits.conn, leaf, None, None))
        else:
            mask = bits.ids_mask(_sql_leaf_ids(bits.conn, leaf, bits.to_ids(mask), None))
    return mask


def _dense_only(expr) -> bool:
    """Every metatag of `expr` has a dense column (or is id:)."""
    if isinstance(expr, MetaFilter):
        return expr.name == "id" or (expr.name in DENSE and expr.name not in _BY_PREDICATE) \
            or (expr.name == "is" and all(v in _DENSE_PREDICATES for v in expr.values))
    if isinstance(expr, Not):
        return _dense_only(expr.child)
    return all(_dense_only(c) for c in expr.children)


def _bits_tags(bits: Bits, tags: tuple[Tag, ...]) -> np.ndarray:
    stored = [bits.tag(t.id) for t in tags if t.id in bits.tags]
    rest = [t.id for t in tags if t.id not in bits.tags]
    if rest:  # tags without a bitmap: their ids, in any order, set into one more mask
        sql = f"{TAG_SUBQUERY} IN ({marks(len(rest))})"
        stored.append(bits.ids_mask(_read_ids(bits.conn, sql, tuple(rest))))
    return _reduce(np.bitwise_or, stored, bits.full(False))


def _reduce(op, masks: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """`op` over the masks (a new array; `empty` when there are none)."""
    if not masks:
        return empty
    out = masks[0].copy() if len(masks) == 1 else op(masks[0], masks[1])
    for mask in masks[2:]:
        op(out, mask, out=out)
    return out


def _bits_meta(bits: Bits, expr, ids: np.ndarray | None = None) -> np.ndarray | None:
    """A metatag expression over the dense columns, as a bool array over the span (packed
    once by the caller), or over `ids` when given; None when a metatag has no column."""
    out = _bits_meta3(bits, expr, ids)
    return None if out is None else out[0]


def _bits_meta3(bits: Bits, expr, ids: np.ndarray | None):
    """(true, false) masks of SQL's three-valued logic: `false` None means `~true` (no NULL
    involved). Only pixiv_id is NULL-able among the dense columns: `pixiv_id:>5` is unknown,
    not false, for a post without one, so `-pixiv_id:>5` leaves that post out as SQL does."""
    size = bits.span if ids is None else ids.size
    if isinstance(expr, MetaFilter):
        out = _bits_filter(bits, expr, ids)
        if out is None:
            return None
        t, f = out if isinstance(out, tuple) else (out, None)
        return ((~t if f is None else f), (None if f is None else t)) if expr.negated else (t, f)
    if isinstance(expr, Not):
        inner = _bits_meta3(bits, expr.child, ids)
        if inner is None:
            return None
        t, f = inner
        return (~t, None) if f is None else (f, t)
    parts = [_bits_meta3(bits, c, ids) for c in expr.children]
    if any(p is None for p in parts):
        return None
    ts = [t for t, _ in parts]
    nulls = any(f is not None for _, f in parts)
    fs = [~t if f is None else f for t, f in parts] if nulls else []
    if isinstance(expr, And):
        t = _reduce(np.logical_and, ts, np.ones(size, dtype=bool))
        f = _reduce(np.logical_or, fs, np.zeros(size, dtype=bool)) if nulls else None
    else:
        t = _reduce(np.logical_or, ts, np.zeros(size, dtype=bool))
        f = _reduce(np.logical_and, fs, np.ones(size, dtype=bool)) if nulls else None
    return t, f


# is:/status:/has: predicates that a dense column answers: key → (column, test)
_DENSE_PREDICATES = {"deleted": ("deleted", lambda v: v == 1), "active": ("deleted", lambda v: v != 1),
                     "all": None,
                     **{k: ("flags", lambda v, b=bit: (v & b) != 0) for k, (bit, _) in FLAG_BITS.items()},
                     **{k: ("flags", lambda v, b=FLAG_BITS[of][0]: (v & b) == 0) for k, of in FLAG_NOT.items()}}
_BY_PREDICATE = ("deleted", "flags")  # dense columns only reached through a predicate


def _bits_filter(bits: Bits, f: MetaFilter, ids: np.ndarray | None = None):
    """A bool mask of the posts passing `f` (ignoring f.negated), or (true, false) masks for
    a NULL-able column; None when it has no dense column."""
    size = bits.span if ids is None else ids.size

    def column(name: str) -> np.ndarray:
        values = bits.column(name)
        # the candidates' values (ids outside the span: see posts_among)
        return values if ids is None else values[np.clip(ids - bits.base, 0, bits.span - 1)]

    if f.name == "is":
        if not all(v in _DENSE_PREDICATES for v in f.values):
            return None
        masks = []
        for v in f.values:
            if _DENSE_PREDICATES[v] is None:  # status:any
                masks.append(np.ones(size, dtype=bool))
                continue
            name, test = _DENSE_PREDICATES[v]
            masks.append(test(column(name)))
        return _reduce(np.logical_or, masks, np.zeros(size, dtype=bool))
    if f.name == "id":
        if ids is not None:
            values = ids
        else:  # positions of the span: slices, no column needed
            mask = np.zeros(bits.span, dtype=bool)
            for r in f.ranges:
                lo = -np.inf if r.lo is None else r.lo + (0 if r.lo_inclusive else 1)
                hi = np.inf if r.hi is None else r.hi + (1 if r.hi_inclusive else 0)
                start, stop = (int(np.clip(v - bits.base, 0, bits.span)) for v in (lo, hi))
                mask[start:stop] = True
            return mask
    elif f.name not in DENSE or not bits.has(f.name):
        return None
    elif f.name == "filetype":  # codes of the vocabulary; a value not in it matches nothing
        codes = {e: i + 1 for i, e in enumerate(bits.vocab("filetype"))}
        values = column("filetype")
        return _reduce(np.logical_or, [values == codes[v] for v in f.values if v in codes],
                       np.zeros(size, dtype=bool))
    elif f.name == "date":
        return _bits_dates(f, column("date"), size)
    else:
        values = column(f.name)
    if f.values:  # rating:g,s: a few equality tests beat np.isin's sort by far
        return _reduce(np.logical_or, [values == v for v in f.values], np.zeros(size, dtype=bool))
    masks = []
    for r in f.ranges:
        if r.lo is not None and r.lo == r.hi and r.lo_inclusive and r.hi_inclusive:
            masks.append(values == r.lo)  # score:1,5,10
            continue
        mask = np.ones(size, dtype=bool)
        if r.lo is not None:
            mask &= values >= r.lo if r.lo_inclusive else values > r.lo
        if r.hi is not None:
            mask &= values <= r.hi if r.hi_inclusive else values < r.hi
        masks.append(mask)
    t = _reduce(np.logical_or, masks, np.zeros(size, dtype=bool))
    if f.name != "pixiv_id":
        return t
    # NULL pixiv_id (flags bit clear): false for exact values (`IN (...) AND pixiv_id IS NOT
    # NULL`), unknown for a range (`pixiv_id > 5`), true for an unbounded one (`1`)
    known = (column("flags") & FLAG_BITS["pixiv"][0]) != 0
    exact = [r.lo is not None and r.lo == r.hi and r.lo_inclusive and r.hi_inclusive for r in f.ranges]
    if any(r.lo is None and r.hi is None for r in f.ranges):
        return t | ~known  # `pixiv_id:..`-like: SQL's `1`, true for every post
    t = t & known
    return (t, ~t) if all(exact) else (t, ~t & known)


def _bits_dates(f: MetaFilter, codes: np.ndarray, size: int) -> np.ndarray | None:
    """date:/age:/year: ranges over the date column (see query_bits.date_bound)."""
    masks = []
    for r in f.ranges:
        if r.lo is not None and r.lo == r.hi and r.lo_inclusive and r.hi_inclusive:
            masks.append(np.zeros(size, dtype=bool))  # created_at = '2020-01-01': never
            continue
        mask = np.ones(size, dtype=bool)
        for bound, lower in ((r.lo, True), (r.hi, False)):
            if bound is None:
                continue
            code = date_bound(bound) if isinstance(bound, str) else None
            if code is None:
                return None
            mask &= (codes >= code) if lower else (codes < code)
        masks.append(mask)
    return _reduce(np.logical_or, masks, np.zeros(size, dtype=bool))


# -- pages ------------------------------------------------------------------------------------
def _page(
    conn: sqlite3.Connection,
    order: Order | None,
    ids: np.ndarray,
    keys: np.ndarray | None,
    after_id: int | None,
    limit: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Order `ids` (ascending already) by the query's order and drop everything up to the cursor;
    with `limit`, only the first `limit` are guaranteed in order (a top-k, not a full sort)."""
    descending = order is not None and order.descending
    if keys is None:  # order by id
        if after_id is not None:
            ids = ids[ids < after_id] if descending else ids[ids > after_id]
        return ids[::-1] if descending else ids
    if after_id is not None:
        key = _cursor_key(conn, order, after_id, seed=seed)
        if descending:
            mask = (keys < key) | ((keys == key) & (ids < after_id))
        else:
            mask = (keys > key) | ((keys == key) & (ids > after_id))
        ids, keys = ids[mask], keys[mask]
    if limit is not None and 0 < limit < ids.size // 4 and keys.dtype != object:
        # Keep every post whose key ties or beats the limit-th best key: a superset of the
        # page, found in linear time; the sort below then orders only those.
        kth = np.partition(keys, keys.size - limit)[keys.size - limit] if descending \
            else np.partition(keys, limit - 1)[limit - 1]
        keep = keys >= kth if descending else keys <= kth
        ids, keys = ids[keep], keys[keep]
    # ids are ascending, so a stable sort on the key gives (key asc, id asc); reversed, that is
    # (key desc, id desc), Danbooru's tie-break for descending orders.
    sort = np.argsort(keys, kind="stable")
    ids = ids[sort]
    return ids[::-1] if descending else ids


def _windowed_ids(conn: sqlite3.Connection, plan: Plan, limit: int, after_id: int | None) -> list[int]:
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
        ids = _eval(conn, plan.tree, None, (lo, lo + window))
        found.extend(ids[: limit - len(found)].tolist())
        lo += window
        window *= 4  # the estimate was too hopeful: widen fast (few windows even when sparse)
    return found


def _first_window(plan: Plan, limit: int, id_span: int) -> int:
    """Ids to scan for about 2x `limit` matches, assuming the query's parts are independent."""
    share = estimate(plan.tree, id_span) / max(id_span, 1)
    return max(_MIN_WINDOW, int(2 * limit / max(share, 1e-9)))


def _walkable(conn: sqlite3.Connection, plan: Plan, order: Order, limit: int) -> bool:
    """Walk the order's index when a page is expected within `_WALK_MAX` entries."""
    if order.name != "id" and not (order.name in _WALK_INDEX
                                   and _has_index(conn, "post", (_WALK_INDEX[order.name],))):
        return False
    share = estimate(plan.tree, plan.posts) / max(plan.posts, 1)
    return limit == 0 or limit / max(share, 1e-12) <= _WALK_MAX


def _walked_ids(conn: sqlite3.Connection, plan: Plan, order: Order, limit: int,
                after_id: int | None) -> list[int] | None:
    """A page in `order`: index entries in growing chunks from the cursor, each chunk's
    matches kept in walk order. None when the walk reads 4x `_WALK_MAX` entries without
    filling the page (the estimate was wrong: the full plan is cheaper then)."""
    if limit == 0:
        return []
    share = estimate(plan.tree, plan.posts) / max(plan.posts, 1)
    chunk = max(_MIN_CHUNK, int(2 * limit / max(share, 1e-12)))
    cursor = None if after_id is None else (_cursor_key(conn, order, after_id, raw=True), after_id)
    found: list[int] = []
    walked = 0
    while len(found) < limit:
        ids, keys = _walk_chunk(conn, order, cursor, chunk)
        if ids.size == 0:
            break
        walked += ids.size
        match = _eval(conn, plan.tree, np.sort(ids), None)
        found.extend(ids[np.isin(ids, match, assume_unique=True)][: limit - len(found)].tolist())
        if ids.size < chunk or len(found) >= limit:
            break
        if walked > 4 * _WALK_MAX:
            return None
        cursor = (keys[-1], int(ids[-1]))
        chunk *= 4
    return found


def _walk_chunk(conn: sqlite3.Connection, order: Order, cursor: tuple | None,
                n: int) -> tuple[np.ndarray, list]:
    """The next `n` posts in `order` after `cursor` (key, id): ids and raw keys, in order.
    Ties at the cursor key are one index range `(key = k AND id < cursor)`, the rest another."""
    direction, op = ("DESC", "<") if order.descending else ("ASC", ">")
    if order.name == "id":
        where, params = ("", []) if cursor is None else (f"WHERE id {op} ?", [cursor[1]])
        rows = conn.execute(f"SELECT id, id FROM post {where} ORDER BY id {direction} LIMIT ?",
                            [*params, n]).fetchall()
    else:
        column = COLUMN[order.name]
        index = _index_name(conn, column)
        select = f"SELECT id, {column} FROM post" + (f" INDEXED BY {index}" if index else "")
        if cursor is None:
            rows = conn.execute(f"{select} ORDER BY {column} {direction}, id {direction} LIMIT ?",
                                (n,)).fetchall()
        else:
            key, last = cursor
            rows = conn.execute(f"{select} WHERE {column} = ? AND id {op} ? "
                                f"ORDER BY id {direction} LIMIT ?", (key, last, n)).fetchall()
            if len(rows) < n:
                rows += conn.execute(f"{select} WHERE {column} {op} ? ORDER BY {column} "
                                     f"{direction}, id {direction} LIMIT ?",
                                     (key, n - len(rows))).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows]


def _index_name(conn: sqlite3.Connection, column: str) -> str | None:
    """The quoted name of an index of `post` leading with `column` (_walkable checks there is
    one; without, SQLite sorts each chunk: right, only slow)."""
    for row in conn.execute("PRAGMA index_list(post)").fetchall():
        name = row[1].replace('"', '""')
        if [r[2] for r in conn.execute(f'PRAGMA index_info("{name}")')][:1] == [column]:
            return f'"{name}"'
    return None


# -- records ----------------------------------------------------------------------------------
def post_records(db: DanbooruDB, ids: list[int], chunk: int = 500) -> Iterator[dict]:
    """Post rows (as stored) with `tags`: {category: [names, alphabetical]}, in `ids` order."""
    conn = db.connection()
    columns = db.columns("post")
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        placeholders = marks(len(part))
        rows = conn.execute(
            f"SELECT {', '.join(columns)} FROM post WHERE id IN ({placeholders})", part
        ).fetchall()
        by_id = {row[0]: dict(zip(columns, row)) for row in rows}
        tags = conn.execute(
            "SELECT r.post_id, t.type, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"
            f" WHERE r.post_id IN ({placeholders}) ORDER BY t.name",
            part,
        ).fetchall()
        for record in by_id.values():
            record["tags"] = {t.category_name: [] for t in TagType}
        for post_id, kind, name in tags:
            by_id[post_id]["tags"][TagType(kind).category_name].append(name)
        yield from (by_id[i] for i in part if i in by_id)
