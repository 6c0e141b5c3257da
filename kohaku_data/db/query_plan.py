"""A parsed query bound to one database: tags resolved to ids, wildcards expanded, metatag-only
subtrees compiled to one SQL condition each, and a size estimate on every node.

The tree both engines of `query.py` run has these nodes:

- `TagLeaf(tags)`: posts having any of `tags` (one tag, a wildcard's expansion, or an
  `or` of plain tags, which is one index read per tag and a union);
- `SqlLeaf(where, params)`: a condition on `post` columns (every subtree without tags:
  `rating:g,s score:>10`, `-id:1,2`, `(rating:e or score:<0)`);
- `And`, `Or`, `Not` over those (the classes of `query_parse`).

All user text reaches SQLite as bound parameters; only fixed column names are formatted in.
"""

from __future__ import annotations

import difflib
import re
import sqlite3
from dataclasses import dataclass

import numpy as np

from kohaku_data.db import source_trigrams
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.query_parse import (
    ALL_METATAGS,
    MAX_WILDCARD_TAGS,
    And,
    MetaFilter,
    Node,
    Not,
    Or,
    ParsedQuery,
    QueryError,
    Range,
    TagTerm,
    Wildcard,
    parse_query,
    walk,
)

# SQL for each metatag / order key: fixed strings only (never user text).
COLUMN = {
    "id": "id", "score": "score", "favcount": "fav_count", "width": "image_width",
    "height": "image_height", "date": "created_at", "filesize": "file_size",
    "rating": "rating", "filetype": "file_ext",
    "mpixels": "(image_width * image_height / 1000000.0)",
    # Danbooru rounds the ratio to 2 decimals before comparing (ratio:16:9 == ratio:1.78).
    "ratio": "ROUND(CAST(image_width AS REAL) / MAX(image_height, 1), 2)",
    "upvotes": "up_score", "downvotes": "ABS(down_score)", "pixiv_id": "pixiv_id", "md5": "md5",
    "change": "updated_at", "source": "source", "parent": "parent_id",
    # Danbooru2023 has no tag_count columns: counted from the relations (the bitmap index of
    # query_bits keeps them dense; this SQL is the fallback and the plain engine's).
    "tagcount": "(SELECT count(*) FROM posttagrelation WHERE post_id = post.id)",
    **{name: "(SELECT count(*) FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
             f"WHERE r.post_id = post.id AND t.type = {kind})"
       for name, kind in (("gentags", 0), ("arttags", 1), ("chartags", 2), ("copytags", 3),
                          ("metatags", 4))},
}
# Columns that may be NULL: an exact value also requires NOT NULL, so that its negation keeps
# the NULL rows (Danbooru's attribute_matches: `-pixiv_id:42` includes posts without one).
NULLABLE = ("pixiv_id", "md5")
# is:/status:/has:/parent:/child: words → a fixed condition on `post` (never user text).
# Deleted means is_deleted is 1 (a snapshot import may not know; such posts count as shown).
PREDICATES = {
    "all": "1", "deleted": "is_deleted = 1", "banned": "is_banned = 1",
    "active": "is_deleted IS NOT 1",
    "parent": "has_children = 1", "no_children": "has_children = 0",
    "child": "parent_id IS NOT NULL", "no_parent": "parent_id IS NULL",
    "has_source": "source != ''", "no_source": "source = ''",
    "pixiv": "pixiv_id IS NOT NULL", "no_pixiv": "pixiv_id IS NULL",
    "parent_deleted": "parent_id IS NOT NULL AND parent_id IN (SELECT id FROM post WHERE is_deleted = 1)",
    "parent_banned": "parent_id IS NOT NULL AND parent_id IN (SELECT id FROM post WHERE is_banned = 1)",
    "parent_active": "parent_id IS NOT NULL AND parent_id IN (SELECT id FROM post WHERE is_deleted IS NOT 1)",
    "child_deleted": "has_children = 1 AND id IN (SELECT parent_id FROM post "
                     "WHERE is_deleted = 1 AND parent_id IS NOT NULL)",
    "child_banned": "has_children = 1 AND id IN (SELECT parent_id FROM post "
                    "WHERE is_banned = 1 AND parent_id IS NOT NULL)",
    "child_active": "has_children = 1 AND id IN (SELECT parent_id FROM post "
                    "WHERE is_deleted IS NOT 1 AND parent_id IS NOT NULL)",
}
# Expected share of posts a predicate keeps (for plan order; Danbooru2023: ~6% deleted).
_PREDICATE_SHARE = {"deleted": 0.06, "banned": 0.01, "all": 1.0, "active": 0.94}
# The implicit `-status:deleted` of a query without an is:/status: that shows deleted posts.
HIDE_DELETED = MetaFilter("is", values=("deleted",))
TAG_SUBQUERY = "SELECT post_id FROM posttagrelation WHERE tag_id"
# Values one metatag may list (SQLite binds at most 32766 parameters per statement).
MAX_VALUES = 10_000
# Without better knowledge, each metatag keeps about half of the posts it sees.
_META_SHARE = 0.5


@dataclass(frozen=True)
class Tag:
    name: str
    id: int
    popularity: int


@dataclass(frozen=True)
class TagLeaf:
    """Posts having at least one of `tags` (empty: none; a wildcard that matched nothing)."""

    tags: tuple[Tag, ...]

    @property
    def estimate(self) -> int:
        return sum(t.popularity for t in self.tags)


@dataclass(frozen=True)
class SqlLeaf:
    """A condition on post columns. `bounded` when it confines ids to `estimate` values
    (`id:1,2,3`, `id:100..200`), so it is worth running before any tag."""

    where: str
    params: tuple
    estimate: float
    bounded: bool = False
    expr: Node | None = None  # the metatags it came from (MetaFilter, And/Or/Not of them)


@dataclass(frozen=True)
class Plan:
    query: ParsedQuery
    tree: object  # TagLeaf | SqlLeaf | And | Or | Not
    posts: int  # rows of `post` (an estimate base; max(id) - min(id) + 1 is close enough)

    @property
    def has_tags(self) -> bool:
        return self.query.has_tags


_TRIGRAM = 3  # source: patterns with a literal run this long read the trigram table


def make_plan(db: DanbooruDB, text: str, strict: bool = True) -> Plan:
    """`text` bound to `db`. `strict`: a name that is neither a tag nor an alias is an error
    with a did-you-mean (else it matches no post, as on Danbooru)."""
    query = parse_query(text)
    conn = db.connection()
    lo, hi = conn.execute("SELECT (SELECT min(id) FROM post), (SELECT max(id) FROM post)").fetchone()
    posts = 0 if hi is None else hi - lo + 1
    tags = _resolve(db, query.tag_names, strict)
    wildcards = {n.pattern: _expand(db, n.pattern) for n in walk(query.tree) if isinstance(n, Wildcard)}
    # migration 0015: source: patterns may read the trigram table (probed on this connection)
    trigrams = conn if source_trigrams.is_current(db) else None
    tree = _bind(query.tree, tags, wildcards, posts, trigrams)
    if not query.show_deleted:  # Danbooru hides deleted posts unless the query asks for them
        parts = list(tree.children) if isinstance(tree, And) else [tree]
        tree = _group(And, [*parts, Not(_meta_leaf(HIDE_DELETED, posts))], posts)
    return Plan(query, tree, posts)


# -- binding ----------------------------------------------------------------------------------
def _bind(node: Node, tags: dict[str, Tag], wildcards: dict[str, tuple[Tag, ...]], posts: int,
          trigrams: sqlite3.Connection | None = None):
    if isinstance(node, TagTerm):
        return TagLeaf((tags[node.name],))
    if isinstance(node, Wildcard):
        return TagLeaf(wildcards[node.pattern])
    if isinstance(node, MetaFilter):
        if node.negated and node.name == "is" and node.values == HIDE_DELETED.values:
            # the complement of a small indexed set (partial index of migration 0013)
            return Not(_meta_leaf(HIDE_DELETED, posts))
        return _meta_leaf(node, posts, trigrams)
    if isinstance(node, Not):
        child = _bind(node.child, tags, wildcards, posts, trigrams)
        if isinstance(child, SqlLeaf):
            return SqlLeaf(f"NOT ({child.where})", child.params, max(posts - child.estimate, 0),
                           expr=Not(child.expr))
        return Not(child)
    children = [_bind(c, tags, wildcards, posts, trigrams) for c in node.children]
    return _group(type(node), children, posts)


def _group(kind, children: list, posts: int):
    """And/Or of bound children: all SQL children fuse into one leaf, and (for Or) all tag
    children into one union, so each is a single read."""
    sql = [c for c in children if isinstance(c, SqlLeaf)]
    rest = [c for c in children if not isinstance(c, SqlLeaf)]
    if kind is Or:
        leaves = [c for c in rest if isinstance(c, TagLeaf)]
        rest = [c for c in rest if not isinstance(c, TagLeaf)]
        if leaves:
            union = tuple(dict.fromkeys(t for leaf in leaves for t in leaf.tags))
            rest.insert(0, TagLeaf(union))
    if len(sql) > 1:
        joiner = " AND " if kind is And else " OR "
        where = joiner.join(f"({c.where})" for c in sql) or ("1" if kind is And else "0")
        params = tuple(p for c in sql for p in c.params)
        if kind is And:
            estimate = min(c.estimate for c in sql) if any(c.bounded for c in sql) else \
                posts * _META_SHARE ** len(sql)
            bounded = any(c.bounded for c in sql)
        else:
            estimate, bounded = min(posts, sum(c.estimate for c in sql)), all(c.bounded for c in sql)
        expr = kind(tuple(c.expr for c in sql))
        sql = [SqlLeaf(where, params, estimate, bounded, expr)]
    children = sql + rest
    if len(children) == 1:
        return children[0]
    return kind(tuple(children))


def _meta_leaf(f: MetaFilter, posts: int, trigrams: sqlite3.Connection | None = None) -> SqlLeaf:
    share = _META_SHARE
    if f.name == "is":
        where, params = " OR ".join(f"({PREDICATES[v]})" for v in f.values), ()
        share = min(1.0, sum(_PREDICATE_SHARE.get(v, _META_SHARE) for v in f.values))
    elif f.name == "source":
        parts = [_source_sql(v, trigrams, posts) for v in f.values]
        where = " OR ".join(f"({sql})" for sql, _ in parts)
        params = tuple(p for _, args in parts for p in args)
    elif f.name == "parent":  # parent:N: post N and its children
        where, params = "id = ? OR (parent_id = ? AND parent_id IS NOT NULL)", (
            f.ranges[0].lo, f.ranges[0].lo)
        share = 0.0
    elif f.values:
        column = COLUMN[f.name]
        where, params = f"{column} IN ({marks(len(f.values))})", tuple(f.values)
        if f.name in NULLABLE:
            where += f" AND {column} IS NOT NULL"
    else:
        column = COLUMN[f.name]
        # Exact values become one IN list (id:1,2,3,...): a chain of thousands of ORs would
        # pass SQLite's expression depth limit.
        single = [r.lo is not None and r.lo == r.hi and r.lo_inclusive and r.hi_inclusive
                  for r in f.ranges]
        exact = [r.lo for r, one in zip(f.ranges, single) if one]
        parts = [range_sql(column, r) for r, one in zip(f.ranges, single) if not one]
        if exact:
            null_guard = f" AND {column} IS NOT NULL" if f.name in NULLABLE else ""
            parts.insert(0, (f"{column} IN ({marks(len(exact))}){null_guard}", exact))
        where = " OR ".join(f"({sql})" for sql, _ in parts)
        params = tuple(p for _, args in parts for p in args)
    if len(params) > MAX_VALUES:
        raise QueryError(f"{f.name}: has {len(params)} values; give at most {MAX_VALUES}")
    estimate, bounded = posts * share, False
    if f.name == "id" and all(r.lo is not None and r.hi is not None for r in f.ranges):
        estimate, bounded = min(posts, sum(r.hi - r.lo + 1 for r in f.ranges)), True
    if f.negated:
        return SqlLeaf(f"NOT ({where})", params, max(posts - estimate, 0) if bounded else estimate,
                       expr=f)
    return SqlLeaf(where, params, estimate, bounded, f)


def _source_sql(value: str, trigrams: sqlite3.Connection | None = None, posts: int = 0) -> tuple[str, list]:
    """source:TEXT as SQL: today's LIKE (a prefix, `*` any run), plus a way to its candidates.

    - The range of the case-insensitive index of migration 0014 that holds every match of
      TEXT's literal start, so SQLite reads that range of the index (no row reads) instead of
      every post. LIKE folds ASCII case only, as NOCASE does, so the range is exact.
    - With the trigram table of migration 0015 (`trigrams`: a connection to it) and a literal
      run of >= 3 characters after that start, when the start's range is not already narrow
      and the run is in few sources (`_few_hold`): the posts whose source FTS5 finds holding
      that run (`https://*pixiv*`: the few with `pix`/`ixi`/`xiv`). Only the longest such run
      goes to FTS5: the trigrams of a common start (`htt`, `ttp`, `://`) are in every post's
      list, and intersecting them cost 13 s at 12M posts. A pattern that is only a start
      (`https://i.pximg.net/*`) takes the range.
    Each candidate is re-checked by the LIKE on its row: the FTS5 run is a superset (its
    tokenizer folds Unicode case), so the result is exactly the LIKE's."""
    like = "source LIKE ? ESCAPE '\\'"
    prefix = value.split("*", 1)[0]
    run = _longest_inner_literal(value)
    if (trigrams is not None and len(run) >= _TRIGRAM and not _narrow_range(trigrams, prefix)
            and _few_hold(trigrams, run, posts)):
        # `+source`: SQLite would otherwise read the LIKE's start off the NOCASE index (its
        # LIKE optimisation), the wide range this branch avoids, instead of the candidates.
        return (f"id IN (SELECT rowid FROM {source_trigrams.TABLE} WHERE source LIKE ?) AND +{like}",
                [f"%{run}%", _like_prefix(value)])
    bounds = _prefix_bounds(prefix)
    if bounds is None:
        return like, [_like_prefix(value)]
    return (f"source COLLATE NOCASE >= ? AND source COLLATE NOCASE < ? AND {like}",
            [*bounds, _like_prefix(value)])


def _prefix_bounds(prefix: str) -> tuple[str, str] | None:
    """[prefix, next string) of the NOCASE index, or None when there is none (no prefix, or no
    next character past its last: surrogates)."""
    if not prefix or ord(prefix[-1]) >= 0xD7FF:
        return None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


# A start whose index range holds fewer sources than this is read as a range, whatever else
# the pattern holds: counting that far is ~1 ms, less than an FTS5 lookup.
_NARROW_RANGE = 2_000


def _narrow_range(conn: sqlite3.Connection, prefix: str) -> bool:
    bounds = _prefix_bounds(prefix)
    if bounds is None:
        return False
    (n,) = conn.execute("SELECT count(*) FROM (SELECT 1 FROM post WHERE source COLLATE NOCASE >= ? AND "
                        "source COLLATE NOCASE < ? LIMIT ?)", [*bounds, _NARROW_RANGE]).fetchone()
    return n < _NARROW_RANGE


def _few_hold(conn: sqlite3.Connection, run: str, posts: int) -> bool:
    """Whether fewer than 1/64 of the posts have a source holding `run` (FTS5 counts up to
    that many, ~1.6 µs each). Past that, FTS5's long lists and a row read per candidate cost
    more than the LIKE over every source: `*twitter.com*` at 12M posts (3.6M hold it) took
    9.2 s through the trigrams, 0.8 s as a scan."""
    limit = max(posts // 64, _NARROW_RANGE)
    (n,) = conn.execute(f"SELECT count(*) FROM (SELECT rowid FROM {source_trigrams.TABLE} WHERE source LIKE ? "
                        "LIMIT ?)", [f"%{run}%", limit]).fetchone()
    return n < limit


def _longest_inner_literal(value: str) -> str:
    """The longest run of characters after the literal start that a trigram can match (`*` is
    any run; a literal `%` or `_` matches any character in FTS5, which takes no ESCAPE).
    The last part is a run too: `*.png` is a prefix match, so `.png` may sit anywhere."""
    inner = value.split("*")[1:]
    runs = [run for part in inner for run in re.split(r"[%_]", part)]
    return max(runs, key=len, default="")


def _like_prefix(value: str) -> str:
    """source: text → a LIKE pattern: a prefix, `*` any run; `%`, `_` and `\\` literal."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%") + "%"


def range_sql(column: str, rng: Range) -> tuple[str, list]:
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


# order:random: a seeded 32-bit mix of the id (the same in numpy and in SQL, which has no xor:
# a ^ b = (a | b) - (a & b)), so a recipe's random order and random:N are reproducible.
_MASK = 0xFFFFFFFF


def random_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    h = (ids.astype(np.int64) * 2654435761 + (seed & _MASK)) & _MASK
    h = ((h ^ (h >> 15)) * 73244475) & _MASK
    return h ^ (h >> 13)


def random_sql(seed: int) -> tuple[str, list]:
    """random_keys as one SQL expression over `id` (the seed is a bound parameter)."""
    def xor_shift(x: str, n: int) -> str:
        return f"(({x} | ({x} >> {n})) - ({x} & ({x} >> {n})))"

    h1 = f"((id * 2654435761 + ?) & {_MASK})"
    h2 = f"(({xor_shift(h1, 15)} * 73244475) & {_MASK})"
    sql = xor_shift(h2, 13)
    return sql, [seed & _MASK] * sql.count("?")


def marks(n: int) -> str:
    return ",".join("?" * n)


def estimate(node, posts: int) -> float:
    """Expected number of matching posts, assuming the parts are independent."""
    if isinstance(node, (TagLeaf, SqlLeaf)):
        return min(node.estimate, posts)
    if isinstance(node, Not):
        return max(posts - estimate(node.child, posts), 0)
    sizes = [estimate(c, posts) for c in node.children]
    if isinstance(node, Or):
        return min(posts, sum(sizes))
    share = 1.0
    for size in sizes:
        share *= size / posts if posts else 0.0
    return share * posts


# -- SQL of a bound tree (the plain engine, and the no-tag fast path) ---------------------------
def tree_sql(node) -> tuple[str, list]:
    """One WHERE condition on `post` for the whole tree (tags as `id IN (subquery)`)."""
    if isinstance(node, SqlLeaf):
        return node.where, list(node.params)
    if isinstance(node, TagLeaf):
        if not node.tags:
            return "0", []
        if len(node.tags) == 1:
            return f"id IN ({TAG_SUBQUERY} = ?)", [node.tags[0].id]
        return f"id IN ({TAG_SUBQUERY} IN ({marks(len(node.tags))}))", [t.id for t in node.tags]
    if isinstance(node, Not):
        sql, params = tree_sql(node.child)
        return f"NOT ({sql})", params
    if not node.children:
        return ("1" if isinstance(node, And) else "0"), []
    parts = [tree_sql(c) for c in node.children]
    joiner = " AND " if isinstance(node, And) else " OR "
    return joiner.join(f"({s})" for s, _ in parts), [p for _, ps in parts for p in ps]


# -- tag resolution ---------------------------------------------------------------------------
def _resolve(db: DanbooruDB, names: tuple[str, ...], strict: bool = True) -> dict[str, Tag]:
    """Name → tag, following kdata_tag_alias first (as Danbooru rewrites aliased search tags).
    An alias whose target no post has matches nothing (Danbooru: an empty result); a name that
    is neither a tag nor an alias is an error with a did-you-mean when `strict`, else the same."""
    if not names:
        return {}
    conn = db.connection()
    aliases = _aliases(db, names)
    canonical = {n: aliases.get(n, n) for n in names}
    wanted = sorted(set(canonical.values()))
    rows = conn.execute(
        f"SELECT name, id, popularity FROM tag WHERE name IN ({marks(len(wanted))})", wanted
    ).fetchall()
    found = {name: (tag_id, pop) for name, tag_id, pop in rows}
    unknown = [n for n in names if canonical[n] not in found and n not in aliases]
    if unknown and strict:
        raise QueryError(_unknown_message(db, unknown))
    return {n: Tag(canonical[n], *found.get(canonical[n], (_NO_TAG, 0))) for n in names}


# The id of a tag no post has (no relation row holds it): a name that matches nothing.
_NO_TAG = -1


def _expand(db: DanbooruDB, pattern: str) -> tuple[Tag, ...]:
    """The tags a wildcard stands for, as Danbooru picks them: names matching the pattern
    with posts, most popular first (ties by name), at most MAX_WILDCARD_TAGS."""
    glob = "".join("[" + ch + "]" if ch in "?[" else ch for ch in pattern)
    # A pattern with a literal prefix is a range of the unique name index (`+` keeps SQLite
    # off the popularity index there); `*_hair` walks tag(popularity DESC, name) of migration
    # 0010 and stops at the cap's last match instead of testing and sorting every name.
    plus = "" if pattern.startswith("*") else "+"
    rows = db.connection().execute(
        f"SELECT name, id, popularity FROM tag WHERE name GLOB ? AND {plus}popularity > 0 "
        f"ORDER BY {plus}popularity DESC, name LIMIT ?", (glob, MAX_WILDCARD_TAGS)
    ).fetchall()
    return tuple(Tag(*row) for row in rows)


def _aliases(db: DanbooruDB, names: tuple[str, ...]) -> dict[str, str]:
    if not db.has_table("kdata_tag_alias"):  # file not migrated yet: no aliases
        return {}
    rows = db.connection().execute(
        f"SELECT alias, tag_name FROM kdata_tag_alias WHERE alias IN ({marks(len(names))})",
        list(names),
    ).fetchall()
    return dict(rows)


def _unknown_message(db: DanbooruDB, unknown: list[str]) -> str:
    parts = []
    for name in unknown:
        pool = [c for c in _suggestion_pool(db, name) if c != name]
        close = difflib.get_close_matches(name, pool, n=5, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    colon = any(":" in n for n in unknown)
    tail = "; metatags are " + ", ".join(m + ":" for m in ALL_METATAGS) if colon else ""
    return (f"unknown tag{'s' if len(parts) > 1 else ''}: {', '.join(parts)}{tail} "
            "(neither a tag nor an alias in this DB; --allow-unknown searches it anyway and "
            "it matches no post)")


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
