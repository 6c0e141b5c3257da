"""Tag cleanup for captions: aliases resolved, rare general tags pruned, implied tags dropped.

Rules, in this order, on each post's tags (tag ids; names come from the DB's tables):

1. **Aliases** (`resolve_aliases`): a tag whose name is an alias (`kdata_tag_alias`) becomes the
   tag it names, when that tag is in the `tag` table (else it stays as it is). A post holding
   both ends up with the tag once.
2. **Pruning** (`min_general_posts = N`): general tags whose `tag.popularity` (the number of
   posts carrying them) is below N are left out.
3. **Implications** (`drop_implied`): a tag is dropped when another tag of the post implies it
   through any chain of `kdata_tag_implication` (e.g. `cat_ears` → `animal_ears`: a post with
   both keeps `cat_ears`). Implication names go through the aliases too; pairs on a cycle
   (Danbooru forbids them, old dumps may still hold one) are ignored, so no tag ever removes
   itself or its own implier.

Everything is numpy over the page's (post, tag) arrays, no loop per post: aliases are one
lookup, implications a CSR expansion of each tag's implied set and one membership test of
packed (post, tag) keys. The tables are read once (with the thresholds) so a whole build uses
one consistent set, and `summary()` (counts + sha256) goes into dataset.lock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kohaku_data.captions.frame import KeyIndex
from kohaku_data.db.handle import DanbooruDB
from kohaku_data.db.enums import TagType

_EMPTY = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class TagRules:
    """Rule tables in tag-id space (sorted arrays: picklable, cheap to send to workers)."""

    alias_from: np.ndarray = field(default_factory=lambda: _EMPTY)  # sorted tag ids
    alias_to: np.ndarray = field(default_factory=lambda: _EMPTY)  # tag id each one becomes
    pruned: np.ndarray = field(default_factory=lambda: _EMPTY)  # sorted tag ids left out
    implier: np.ndarray = field(default_factory=lambda: _EMPTY)  # sorted unique tag ids that imply something
    implied_start: np.ndarray = field(default_factory=lambda: _EMPTY)  # CSR offsets into `implied`, len(implier) + 1
    implied: np.ndarray = field(default_factory=lambda: _EMPTY)  # tag ids implied (transitively) by implier[i]
    consequents: np.ndarray = field(default_factory=lambda: _EMPTY)  # sorted distinct `implied`
    min_general_posts: int = 0

    @property
    def empty(self) -> bool:
        return not (len(self.alias_from) or len(self.pruned) or len(self.implier))

    def apply(self, post_id: np.ndarray, tag_id: np.ndarray, rid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(tag ids after aliasing, keep mask) of relations given as parallel arrays; of two
        relations that aliasing makes equal the one with the lower `rid` (else the first) stays."""
        tag = tag_id
        if len(self.alias_from):
            found, at = self._index("alias_from").find(tag_id)
            if found.any():
                tag = tag_id.copy()
                tag[found] = self.alias_to[at[found]]
        keep = np.ones(len(tag), dtype=bool)
        if tag is not tag_id:
            keep = _drop_repeats(post_id, tag, found, rid)
        if len(self.pruned):
            keep &= ~self._index("pruned").find(tag)[0]
        if len(self.implier):
            keep &= ~self._implied_mask(post_id, tag, keep)
        return tag, keep

    def _implied_mask(self, post_id: np.ndarray, tag: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Which relations carry a tag implied by another kept tag of the same post."""
        mask = np.zeros(len(tag), dtype=bool)
        found, at = self._index("implier").find(tag)
        rows = np.nonzero(found & keep)[0]
        candidates = np.nonzero(self._index("consequents").find(tag)[0] & keep)[0]  # tags something implies
        if not len(rows) or not len(candidates):
            return mask
        pack = _Packer(post_id, tag, self.implied)
        starts, counts = self.implied_start[at[rows]], np.diff(self.implied_start)[at[rows]]
        implied_keys = []
        for part in _slices(counts, _EXPAND):  # bounded memory however large the implied sets
            c = counts[part]
            offsets = np.repeat(starts[part] - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
            implied_keys.append(pack(np.repeat(post_id[rows[part]], c), self.implied[offsets]))
        implied_sorted = np.sort(np.concatenate(implied_keys))
        mask[candidates] = _find(implied_sorted, pack(post_id[candidates], tag[candidates]))[0]
        return mask

    def _index(self, name: str) -> KeyIndex:
        """A lookup of one sorted id table, built once per object (a gather for dense ids)."""
        cache = self.__dict__.setdefault("_indexes", {})  # not a field: not compared, not in the summary
        if name not in cache:
            cache[name] = KeyIndex(getattr(self, name))
        return cache[name]

    def summary(self) -> dict[str, object]:
        """What dataset.lock records: counts and one sha256 over every table."""
        digest = hashlib.sha256()
        for part in (self.alias_from, self.alias_to, self.pruned, self.implier, self.implied_start, self.implied):
            digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
            digest.update(b"|")
        return {
            "aliases": int(len(self.alias_from)), "pruned_general_tags": int(len(self.pruned)),
            "min_general_posts": self.min_general_posts, "implying_tags": int(len(self.implier)),
            "implied_pairs": int(len(self.implied)), "sha256": digest.hexdigest(),
        }


_EXPAND = 4_000_000  # implied (post, tag) pairs made at once


def _slices(counts: np.ndarray, budget: int) -> list[slice]:
    """Consecutive slices of `counts` whose sums stay near `budget` (one row at least)."""
    ends = np.searchsorted(np.cumsum(counts), np.arange(budget, int(counts.sum()) + budget, budget), "right")
    bounds = np.unique(np.concatenate([[0], np.clip(ends, 1, len(counts)), [len(counts)]]))
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. (numpy 2.4's np.unique / np.isin take seconds on the packed keys
    here — its hash path degrades on them — where a sort takes milliseconds.)"""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    at = np.searchsorted(sorted_keys, queries)
    at = np.minimum(at, len(sorted_keys) - 1)
    return sorted_keys[at] == queries, at


class _Packer:
    """One order-preserving int64 per (post, tag) for the id ranges of a page."""

    def __init__(self, post_id: np.ndarray, *tags: np.ndarray) -> None:
        self.t_lo = int(min(t.min() for t in tags if len(t)))
        self.span = int(max(t.max() for t in tags if len(t))) - self.t_lo + 1
        self.p_lo = int(post_id.min())
        if (int(post_id.max()) - self.p_lo + 1) * self.span >= (1 << 62):
            raise ValueError("post and tag id ranges too wide to pack")

    def __call__(self, post_id: np.ndarray, tag: np.ndarray) -> np.ndarray:
        return (post_id - self.p_lo) * self.span + (tag - self.t_lo)


def _drop_repeats(post_id: np.ndarray, tag: np.ndarray, aliased: np.ndarray, rid: np.ndarray | None) -> np.ndarray:
    """Keep mask without repeated (post, tag) pairs, which only aliasing makes: only the rows
    whose pair an aliased row also has are sorted (lowest rid, else first, stays)."""
    keep = np.ones(len(tag), dtype=bool)
    pack = _Packer(post_id, tag)
    keys = pack(post_id, tag)
    involved = np.nonzero(_find(_sorted_unique(keys[aliased]), keys)[0])[0]
    order_key = rid[involved] if rid is not None else involved
    order = involved[np.lexsort((order_key, keys[involved]))]
    repeat = keys[order][1:] == keys[order][:-1]
    keep[order[1:][repeat]] = False
    return keep


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_tag_rules(db: DanbooruDB, *, aliases: bool, implications: bool, min_general_posts: int) -> TagRules:
    """The rule tables `db` holds for the options that are on (missing tables: no rules)."""
    conn = db.connection()
    names = pl.DataFrame(
        conn.execute("SELECT name, id FROM tag").fetchall(), schema={"name": pl.String, "id": pl.Int64}, orient="row",
    )
    alias_pairs = _pairs(db, "kdata_tag_alias", "alias", "tag_name") if aliases else _no_pairs()
    alias_ids = _resolve_aliases(alias_pairs, names)
    pruned = _EMPTY
    if min_general_posts > 0:
        rows = conn.execute("SELECT id FROM tag WHERE type = ? AND popularity < ?",
                            (int(TagType.GENERAL), min_general_posts)).fetchall()
        pruned = np.unique(np.array([r[0] for r in rows], dtype=np.int64))
    implier, start, implied = _EMPTY, np.zeros(1, dtype=np.int64), _EMPTY
    if implications:
        pairs = _pairs(db, "kdata_tag_implication", "antecedent", "consequent")
        implier, start, implied = _implication_csr(_closure(_canonical(pairs, alias_pairs)), names)
    return TagRules(
        alias_from=alias_ids[0], alias_to=alias_ids[1], pruned=pruned, implier=implier, implied_start=start,
        implied=implied, consequents=_sorted_unique(implied), min_general_posts=min_general_posts,
    )


def _no_pairs() -> pl.DataFrame:
    return pl.DataFrame(schema={"a": pl.String, "b": pl.String})


def _pairs(db: DanbooruDB, table: str, left: str, right: str) -> pl.DataFrame:
    if not db.has_table(table):
        return _no_pairs()
    rows = db.connection().execute(f'SELECT "{left}", "{right}" FROM "{table}"').fetchall()
    return pl.DataFrame(rows, schema={"a": pl.String, "b": pl.String}, orient="row")


def _resolve_aliases(pairs: pl.DataFrame, names: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(from ids, to ids) sorted by from id: aliases whose both names are tags."""
    ids = (pairs.join(names.rename({"name": "a", "id": "from"}), on="a")
           .join(names.rename({"name": "b", "id": "to"}), on="b")
           .filter(pl.col("from") != pl.col("to")).sort("from"))
    return ids["from"].to_numpy().astype(np.int64), ids["to"].to_numpy().astype(np.int64)


def _canonical(pairs: pl.DataFrame, aliases: pl.DataFrame) -> pl.DataFrame:
    """Implication names through the aliases (when on), without self-pairs or repeats."""
    if aliases.height:
        mapping = dict(aliases.iter_rows())
        pairs = pairs.with_columns(pl.col("a").replace(mapping), pl.col("b").replace(mapping))
    return pairs.filter(pl.col("a") != pl.col("b")).unique().sort("a", "b")


def _closure(pairs: pl.DataFrame) -> pl.DataFrame:
    """Transitive closure, minus pairs on a cycle (a implies b and b implies a). Names become
    integers first, and each round joins only the pairs found in the last round with the
    direct implications, so memory stays at the size of the closure itself."""
    names = pl.concat([pairs["a"], pairs["b"]]).unique().sort()
    codes = pl.DataFrame({"name": names, "code": pl.int_range(names.len(), eager=True, dtype=pl.Int64)})
    edges = (pairs.join(codes.rename({"name": "a", "code": "x"}), on="a")
             .join(codes.rename({"name": "b", "code": "y"}), on="b").select("x", "y").unique())
    closed, frontier = edges, edges
    while frontier.height:
        step = frontier.join(edges.rename({"x": "y", "y": "z"}), on="y").select("x", y="z").unique()
        frontier = step.join(closed, on=["x", "y"], how="anti")
        closed = pl.concat([closed, frontier])
    reverse = closed.select(x="y", y="x")
    closed = closed.join(reverse, on=["x", "y"], how="anti").filter(pl.col("x") != pl.col("y"))
    decode = codes.rename({"code": "x", "name": "a"})
    return (closed.join(decode, on="x").join(decode.rename({"x": "y", "a": "b"}), on="y")
            .select("a", "b").sort("a", "b"))


def _implication_csr(pairs: pl.DataFrame, names: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = (pairs.join(names.rename({"name": "a", "id": "ai"}), on="a")
           .join(names.rename({"name": "b", "id": "bi"}), on="b")
           .select("ai", "bi").unique().sort("ai", "bi"))
    implier, counts = np.unique(ids["ai"].to_numpy().astype(np.int64), return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return implier, start, ids["bi"].to_numpy().astype(np.int64)
