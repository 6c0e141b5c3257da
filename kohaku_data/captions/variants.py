"""Caption variants: the other layouts a build stores beside today's Kohaku-XL caption.

Every variant is a string column `variant_<name>` plus `tokens_<name>` (CLIP tokens between the
start and end tokens, `captions/tokens.py`), made per caption page from the caption groups that
`layout.group_lists` cuts (`g_count` … `g_quality`, the attached bands, the text fields):

- `kohaku`: today's caption (`tag_caption` with curation, else `caption`), byte for byte;
- `ordered`: the groups in the variant's order (`noobai`, `animagine4`, `anima` or a list),
  joined by the recipe's separator; artists optionally prefixed (`@`);
- `xml`: `<group>tags</group>` per group, groups joined by a space; empty groups dropped, kept,
  or (`half`) kept for the posts whose splitmix64 key of (id, group) is even;
- `text`: an attached text column (`kdata db attach --kind text`), "" for a post without one;
- `mixed`: the ordered tags and the text, `tags_then_text` or `text_then_tags`, joined by the
  recipe's `text_joiner` (just the tags, or just the text, when the other is missing).

Budgets (`max_tokens`, every kind): a caption over it loses whole tags after the keep
separator by `kohaku_data.train.captions.drop_order` — first the meta tags, then the general
tags, each most frequent first (Danbooru popularity: the least informative go first), then the
other tags after the separator from the end (attached bands, quality, rating, year) — until it
fits. The kept part (count tags, characters, series, artists) is never cut: a recipe whose kept
part alone is over the budget is refused, naming the posts. The reader truncates by the same rule.
Ordered, xml and mixed variants lose the same tags from their own groups (xml: a group left
empty follows `empty_groups`, as an empty group does); text loses whole sentences from the end
(`sentence_cuts`: a sentence ends at . ! ? … before whitespace, or at a line break), never the
first; mixed loses tags first, then sentences. The first sentence is a text's kept part.

Variants are columns only when the recipe adds variants (`wants_variants`) or the caller asks
(builds store every sample's token counts); a plain `kdata caption` writes today's columns.

Token counts are exact: a pre-token never spans whitespace (CLIP's cleaning and pattern are
local between spaces), so a text's count is the sum over pieces that each end in whitespace.
With a separator ending in a space, kohaku, ordered and xml (`drop`) variants are made in the
numeric pass from the layout's elements. The page's caption elements are cut once into runs,
one per (post, caption group) — groups are contiguous in output order — and each run's texts
joined once (`caption_runs`); an ordered or xml variant is then the post's group texts in its
order (`runs_text`: one `concat_str` over the group columns, no per-element strings). Counts
are per-(strings row, slot) counts (`Pieces`: slot = the affix a row gets — separator,
`<group>`, `</group>`, artist prefix, nothing at the end of a post — found from the run
bounds, no sort), summed per post by a bincount; each (row, slot) is counted once per job
(its texts split as columns, each distinct piece through the BPE once) and kept on the
prepared tag table; a (row, affix) whose text is counted elsewhere takes that count — the
kohaku slots, or the row's `ROW_FORMS` (xml group tags, `@` artists) that a refreshed DB's
prepared tag summary stores, so a run on it tokenizes nothing for those variants either. Other variants (text, mixed, attached bands, curated captions, kept empty
xml groups, other separators) are made from the group lists and counted per space-separated
piece (`TokenCounter.column`). tests/test_caption_variants.py holds both ways equal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kohaku_data.captions.layout import (
    CAPTION_CODE, G_ARTIST, G_MARK, GROUP_CODES, PreparedTags, group_lists, row_groups, shuffle_keys, token_cache_key,
)
from kohaku_data.captions.tokens import Tokenizer, load_tokenizer
from kohaku_data.config import CaptionConfig, CaptionVariant
from kohaku_data.errors import KdataError
from kohaku_data.train.captions import drop_order

KEPT_GROUPS = ("count", "character", "copyright", "artist")
REST_GROUPS = ("general", "meta", "year", "rating", "quality", "attached")


class BudgetError(KdataError):
    """A variant's kept part alone is over its token budget."""


@dataclass
class TokenCounter:
    """Token counts of caption columns, each distinct space-separated piece counted once per job."""

    tokenizer: Tokenizer
    pieces: dict[str, int] = field(default_factory=dict)
    piece_hits: int = 0
    piece_lookups: int = 0
    row_lookups: int = 0  # per-(strings row, slot) counts looked up (piece_tokens) …
    row_counted: int = 0  # … and counted, the rest were on the prepared table's cache

    def count(self, text: str) -> int:
        return sum(self._piece(p) for p in text.split(" "))

    def _piece(self, piece: str) -> int:
        n = self.pieces.get(piece)
        if n is None:
            n = self.pieces[piece] = self.tokenizer.count(piece)
        return n

    def column(self, texts: pl.Series) -> np.ndarray:
        """Tokens of every string of `texts` (int32); null counts 0."""
        words = texts.fill_null("").str.split(" ")
        flat = words.explode()
        distinct = flat.unique()
        before = len(self.pieces)
        counts = pl.Series([self._piece(p) for p in distinct.to_list()], dtype=pl.Int32)
        self.piece_lookups += len(flat)
        self.piece_hits += len(flat) - (len(self.pieces) - before)
        per = flat.replace_strict(distinct, counts, return_dtype=pl.Int32).to_numpy()
        lengths = words.list.len().to_numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return np.add.reduceat(per, starts).astype(np.int32) if len(per) else np.zeros(len(texts), np.int32)

    def stats(self) -> dict[str, float]:
        out = {"pieces_cached": len(self.pieces), "piece_lookups": self.piece_lookups,
               "piece_hit_rate": self.piece_hits / self.piece_lookups if self.piece_lookups else 0.0,
               "row_lookups": self.row_lookups,
               "row_hit_rate": 1 - self.row_counted / self.row_lookups if self.row_lookups else 0.0}
        words = getattr(self.tokenizer, "stats", None)
        return {**out, **({f"bpe_{k}": v for k, v in words().items()} if words else {})}


def counter_for(cache: dict, name: str) -> TokenCounter:
    """The job's counter of tokenizer `name`, kept in `cache` (TagSource.job_cache)."""
    key = f"tokens:{name}"
    if key not in cache:
        cache[key] = TokenCounter(load_tokenizer(name))
    return cache[key]


def wants_variants(config: CaptionConfig) -> bool:
    """Whether the recipe asks for variant columns (it adds variants or budgets kohaku)."""
    return bool(config.variants.add)


# ---------------------------------------------------------------------------------------------
# Numeric pass: variants from the layout's elements
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Elements:
    """A page's elements from `layout.caption_elements`, sorted by post, in output order."""

    pi: np.ndarray  # post index
    row: np.ndarray  # strings row of `tags`
    tags: PreparedTags
    posts: int


@dataclass(frozen=True)
class Pieces:
    """A variant's text as pieces in order: piece i is `before[affix[i]] + strings[row[i]] +
    after[affix[i]]`, a post's text its pieces joined with nothing. `slot[i]` is the column of
    the per-row token cache (a row and its slot fix the affix); rows start at `base`."""

    pi: np.ndarray
    row: np.ndarray
    affix: np.ndarray
    slot: np.ndarray
    before: tuple[str, ...]
    after: tuple[str, ...]
    slots: int
    base: int


def _post_ends(pi: np.ndarray) -> np.ndarray:
    """Which elements are the last of their post (`pi` sorted)."""
    end = np.ones(len(pi), dtype=bool)
    end[:-1] = pi[1:] != pi[:-1]
    return end


def _kohaku_pieces(el: Elements, config: CaptionConfig) -> Pieces:
    shown = el.tags.codes[el.row] == CAPTION_CODE
    pi, row = el.pi[shown], el.row[shown]
    last = _post_ends(pi).astype(np.int64)
    return Pieces(pi, row, last, last, ("", ""), (config.separator, ""), 2, el.tags.caption_start)


def _cached_row_groups(tags: PreparedTags) -> np.ndarray:
    if "row_groups" not in tags.cache:
        tags.cache["row_groups"] = row_groups(tags)
    return tags.cache["row_groups"]


@dataclass(frozen=True)
class Runs:
    """A page's caption elements (no raw names, no keep separator; the separator-prefixed
    copies as their plain row) in output order, where each post's caption groups are runs
    one after the other. Shared by every numeric variant of the page: a variant's text is its
    groups' run texts in its order, its token slots come from the run bounds (no sort)."""

    pi: np.ndarray  # per element: post index
    row: np.ndarray  # per element: plain strings row
    group: np.ndarray  # per element: caption group
    run: np.ndarray  # per element: its run
    run_pi: np.ndarray  # per run: post index
    run_group: np.ndarray  # per run: caption group
    first: np.ndarray  # per run: index of its first element
    last: np.ndarray  # per run: index of its last element
    texts: pl.Series  # per run: its texts joined by the recipe's separator
    posts: int
    columns: dict[tuple[int, str], pl.Series] = field(default_factory=dict, compare=False, repr=False)


def _joined(run: np.ndarray, texts: pl.Series, separator: str) -> pl.Series:
    """`texts` (in run order, `run` sorted) joined per run by `separator`."""
    frame = pl.DataFrame({"_r": run, "_t": texts}).with_columns(pl.col("_r").set_sorted())
    # collected as lists, then joined: half the cost of str.join as the aggregation
    return frame.group_by("_r", maintain_order=True).agg("_t").select(pl.col("_t").list.join(separator)).to_series()


def caption_runs(el: Elements, config: CaptionConfig) -> Runs:
    tags = el.tags
    groups = _cached_row_groups(tags)[el.row]
    keep = (groups >= 0) & (groups != G_MARK)
    start, height = tags.caption_start, tags.prefixed_offset
    row = el.row[keep]
    row = np.where(row >= start + height, row - height, row)
    pi, group = el.pi[keep], groups[keep].astype(np.int64)
    key = pi * 16 + group
    if len(key) > 1 and (key[1:] < key[:-1]).any():  # groups not contiguous: order them, stable in-group
        order = np.argsort(key, kind="stable")
        pi, row, group, key = pi[order], row[order], group[order], key[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = key[1:] != key[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(key)) - 1
    run = np.cumsum(new) - 1
    texts = _joined(run, tags.strings.gather(row), config.separator)
    return Runs(pi, row, group, run, pi[first], group[first], first, last, texts, el.posts)


def _group_column(runs: Runs, code: int, prefix: str, tags: PreparedTags, config: CaptionConfig) -> pl.Series:
    """Each post's text of one group (`prefix` before every tag), null where the post has none."""
    key = (code, prefix)
    if key not in runs.columns:
        at = np.flatnonzero(runs.run_group == code)
        if prefix:
            members = np.flatnonzero(runs.group == code)
            texts = _joined(runs.run[members], prefix + tags.strings.gather(runs.row[members]), config.separator)
        else:
            texts = runs.texts.gather(at)
        index = np.full(runs.posts, -1, dtype=np.int64)
        index[runs.run_pi[at]] = np.arange(len(at))
        s = pl.Series(index)
        runs.columns[key] = texts.gather(pl.select(pl.when(s >= 0).then(s)).to_series())
    return runs.columns[key]


def _shown_groups(variant: CaptionVariant) -> list[tuple[str, int]]:
    return [(name, GROUP_CODES[name]) for name in variant.groups() if name in GROUP_CODES]


def runs_text(runs: Runs, variant: CaptionVariant, tags: PreparedTags, config: CaptionConfig) -> pl.Series:
    """The ordered or xml (empty groups dropped) text of each post, from the run texts."""
    parts, xml = [], variant.kind == "xml"
    for name, code in _shown_groups(variant):
        col = pl.lit(_group_column(runs, code, variant.artist_prefix if name == "artist" else "", tags, config))
        parts.append(pl.lit(f"<{name}>") + col + pl.lit(f"</{name}>") if xml else col)
    if not parts:
        return pl.Series([""] * runs.posts, dtype=pl.String)
    joined = pl.concat_str(parts, separator=" " if xml else config.separator, ignore_nulls=True)
    return pl.select(joined.fill_null("")).to_series()


def _runs_pieces(runs: Runs, variant: CaptionVariant, config: CaptionConfig, base: int) -> Pieces:
    """The variant's pieces from the run bounds: a post's last piece ends its last shown group
    in this variant's order; xml slot bits first in group (1), last in group (2), last of post (4)."""
    position = np.full(16, -1, dtype=np.int64)
    for at, (_, code) in enumerate(_shown_groups(variant)):
        position[code] = at
    pos = position[runs.run_group]
    shown = np.flatnonzero(pos >= 0)
    # the last shown run of each post: the highest position among its runs (runs sorted by post)
    order = runs.run_pi[shown] * 16 + pos[shown]
    last_run = np.zeros(len(pos), dtype=bool)
    if len(shown):
        starts = np.flatnonzero(np.append(True, runs.run_pi[shown][1:] != runs.run_pi[shown][:-1]))
        top = np.maximum.reduceat(order, starts)
        last_run[shown] = order == np.repeat(top, np.diff(np.append(starts, len(shown))))
    if len(shown) == len(pos):
        at = np.arange(len(runs.pi))
    else:
        at = np.flatnonzero(pos[runs.run] >= 0)
    run = runs.run[at]
    last_in_group = at == runs.last[run]
    end = (last_in_group & last_run[run]).astype(np.int64)
    pi, row = runs.pi[at], runs.row[at]
    if variant.kind == "xml":
        slot = (at == runs.first[run]) + 2 * last_in_group + 4 * end
        before, after = [], []
        for name, _ in _shown_groups(variant):
            pre = variant.artist_prefix if name == "artist" else ""
            for bits in range(8):
                closing, last = bits & 2, bits & 4
                before.append((f"<{name}>" if bits & 1 else "") + pre)
                after.append((f"</{name}>" if closing else "") + ("" if last else " " if closing else config.separator))
        return Pieces(pi, row, pos[run] * 8 + slot, slot, tuple(before), tuple(after), 8, base)
    if not variant.artist_prefix:
        return Pieces(pi, row, end, end, ("", ""), (config.separator, ""), 2, base)
    artist = (runs.group[at] == G_ARTIST).astype(np.int64)
    pre = variant.artist_prefix
    return Pieces(pi, row, artist * 2 + end, end, ("", "", pre, pre), (config.separator, "") * 2, 2, base)


def piece_tokens(p: Pieces, tags: PreparedTags, counter: "TokenCounter", posts: int) -> np.ndarray:
    """Tokens of each post's text: the sum of its pieces' counts (exact when every piece but a
    post's last ends in whitespace). Each (row, slot) is counted once per job, on `tags.cache`;
    the texts of the ones not yet counted are made and split as columns (`TokenCounter.column`)."""
    key = token_cache_key(counter.tokenizer.name, p.before, p.after, p.base)
    cache = tags.cache.get(key)
    if cache is None:
        cache = tags.cache.setdefault(key, np.full((len(tags.strings) - p.base, p.slots), -1, dtype=np.int32))
    r = p.row - p.base
    got = cache[r, p.slot]
    miss = got < 0
    counter.row_lookups += len(got)
    if miss.any():
        # The cache only ever gets final counts: caption threads share the table. Counts known
        # elsewhere (another cache of these rows, the stored forms) go straight in, per element
        # (no unique: on a refreshed DB that is every miss) ...
        at = np.flatnonzero(miss)
        rows, slots, affix = r[at], p.slot[at], p.affix[at]
        known = _same_texts_counted(p, tags, key, rows, affix)
        found = known >= 0
        cache[rows[found], slots[found]] = known[found]
        got[at] = known
        if not found.all():
            # ... the rest: the distinct (row, slot) and their affix (a function of them), a
            # hash unique, not a sort; their texts counted as a column
            left = at[~found]
            wanted = pl.DataFrame({"code": r[left] * p.slots + p.slot[left], "affix": p.affix[left]}).unique()
            code, affix = wanted["code"].to_numpy(), wanted["affix"].to_numpy()
            texts = (pl.Series(p.before, dtype=pl.String).gather(affix) + tags.strings.gather(code // p.slots + p.base)
                     + pl.Series(p.after, dtype=pl.String).gather(affix))
            cache[code // p.slots, code % p.slots] = counter.column(texts)
            counter.row_counted += len(code)
            got[left] = cache[r[left], p.slot[left]]
    return np.bincount(p.pi, weights=got, minlength=posts).astype(np.int32)


def _same_texts_counted(p: Pieces, tags: PreparedTags, key: tuple, rows: np.ndarray, affix: np.ndarray) -> np.ndarray:
    """Counts of (row, affix) texts already on another cache of the same tokenizer and rows
    whose slot is its affix (kohaku and plain ordered: the summary's), or among the row's
    stored forms (`ROW_FORMS`: xml's group tags, the `@` artist prefix), -1 where none: an
    ordered variant's or xml's middle tags are the kohaku texts (`tag, `) again. Vectorized
    by an (affix → other slot) and an (affix, group → form) table, made once per job."""
    out = np.full(len(rows), -1, dtype=np.int32)
    for other, counts in list(tags.cache.items()):
        if not isinstance(other, tuple) or other == key or other[:2] != key[:2] or other[4] != p.base or len(other[2]) != counts.shape[1]:
            continue
        slot_of = {(b, a): s for s, (b, a) in enumerate(zip(other[2], other[3]))}
        slot = np.array([slot_of.get(pair, -1) for pair in zip(p.before, p.after)], dtype=np.int64)[affix]
        mine = np.flatnonzero((slot >= 0) & (out < 0))
        out[mine] = counts[rows[mine], slot[mine]]
    stored = tags.cache.get(tags.token_forms_key(key[1])) if p.base == tags.caption_start else None
    if stored is not None and (out < 0).any():
        separator, forms = stored
        table_key = ("form_columns", key, separator)
        columns = tags.cache.get(table_key)
        if columns is None:  # per (affix, caption group): the stored form column, -1 none
            columns = np.full((len(p.before), 16), -1, dtype=np.int64)
            for at, (b, a) in enumerate(zip(p.before, p.after)):
                for code in _GROUP_NAMES:
                    columns[at, code] = _form_column(code, b, a, separator)
            columns = tags.cache.setdefault(table_key, columns)
        groups = _cached_row_groups(tags)[rows + p.base].astype(np.int64)
        column = np.where(groups >= 0, columns[affix, groups & 15], -1)
        mine = np.flatnonzero((column >= 0) & (out < 0))
        out[mine] = forms[rows[mine], column[mine]]
    return out


# Per caption row, the texts (before + row text + after) that standard variants make of it
# beyond kohaku's two (text + separator, text alone), stored with the prepared tag summary so
# that a run on a refreshed DB tokenizes nothing: xml's (its own group's) open/close tags at a
# group's first/last tag, and anima's `@` before an artist. {open}/{close}: `<group>`/`</group>`
# of the row's caption group, {sep}: the recipe's separator.
ROW_FORMS = (("{open}", "{sep}"), ("", "{close} "), ("{open}", "{close} "), ("", "{close}"), ("{open}", "{close}"),
             ("@", "{sep}"), ("@", ""))
_ARTIST_ONLY = frozenset({5, 6})  # forms only an artist row takes
_GROUP_NAMES = {code: name for name, code in GROUP_CODES.items()}


def _form_texts(code: int, separator: str) -> list[tuple[str, str] | None]:
    """ROW_FORMS for a row of caption group `code` (None: a form the group never takes)."""
    name = _GROUP_NAMES.get(code)
    if name is None:
        return [None] * len(ROW_FORMS)
    fill = {"open": f"<{name}>", "close": f"</{name}>", "sep": separator}
    return [None if (i in _ARTIST_ONLY and code != G_ARTIST) else (b.format(**fill), a.format(**fill))
            for i, (b, a) in enumerate(ROW_FORMS)]


def _form_column(code: int, before: str, after: str, separator: str) -> int:
    forms = _form_texts(code, separator)
    return forms.index((before, after)) if (before, after) in forms else -1


def count_caption_rows(tags: PreparedTags, rows: np.ndarray, config: CaptionConfig, counter: "TokenCounter") -> None:
    """Fill the per-row counts of caption `rows` (strings rows) that the prepared tag summary
    stores, so that a run counts nothing: kohaku's (and plain ordered) per-(row, slot) counts,
    and, for the plain rows, their `ROW_FORMS` (xml tags, `@` artists) as `token_forms_key`."""
    seen = np.zeros(len(tags.strings), dtype=bool)  # distinct and sorted by a mask: np.unique of
    seen[rows] = True  # ~2M rows (Danbooru's tags and their keep-separator copies) costs seconds
    rows = np.flatnonzero(seen)
    base = tags.caption_start
    # the kohaku slots (0: text + separator, 1: text alone) as piece_tokens files them, the rows
    # already distinct: their texts counted as columns directly
    key = tags.token_counts_key(counter.tokenizer.name, config.separator)
    counts = tags.cache.get(key)
    if counts is None:
        counts = np.full((len(tags.strings) - base, 2), -1, dtype=np.int32)
    else:
        counts = counts.copy()
    texts = tags.strings.gather(rows)
    counts[rows - base, 0] = counter.column(texts + config.separator)
    counts[rows - base, 1] = counter.column(texts)
    counter.row_lookups += 2 * len(rows)
    counter.row_counted += 2 * len(rows)
    tags.cache[key] = counts
    forms = np.full((len(tags.strings) - base, len(ROW_FORMS)), -1, dtype=np.int32)
    plain = rows[rows < base + tags.prefixed_offset]
    groups = _cached_row_groups(tags)[plain]
    for code in np.unique(groups).tolist():
        mine = plain[groups == code]
        for column, form in enumerate(_form_texts(int(code), config.separator)):
            if form is not None and len(mine):
                texts = form[0] + tags.strings.gather(mine) + form[1]
                forms[mine - base, column] = counter.column(texts)
    tags.cache[tags.token_forms_key(counter.tokenizer.name)] = (config.separator, forms)


def _numeric(frame: pl.DataFrame, v: CaptionVariant, config: CaptionConfig) -> bool:
    """Whether this variant is made in the numeric pass (else from the group lists and strings)."""
    if not config.separator.endswith(" "):  # pieces would not end in whitespace
        return False
    attached = "attached" in v.groups() and any(c.startswith("attached_") for c in frame.columns)
    if v.kind == "kohaku":
        return "tag_caption" not in frame.columns
    return (v.kind == "ordered" or (v.kind == "xml" and v.empty_groups == "drop")) and not attached


# ---------------------------------------------------------------------------------------------
# Variant strings
# ---------------------------------------------------------------------------------------------
def _group(frame: pl.DataFrame, name: str, variant: CaptionVariant) -> pl.Expr:
    """The list column of one group, as this variant writes it."""
    if name == "attached":
        cols = [c for c in frame.columns if c.startswith("attached_")]
        if not cols:
            return pl.lit([], dtype=pl.List(pl.String))
        return pl.concat_list([pl.col(c) for c in cols]).list.eval(pl.element().filter(
            pl.element().is_not_null() & (pl.element() != "")))
    col = pl.col(f"g_{name}")
    if name == "artist" and variant.artist_prefix:
        return col.list.eval(pl.lit(variant.artist_prefix) + pl.element())
    return col


def _ordered(frame: pl.DataFrame, variant: CaptionVariant, config: CaptionConfig) -> pl.Expr:
    parts = [_group(frame, g, variant) for g in variant.groups()]
    if not parts:
        return pl.lit("")
    return pl.concat_list(parts).list.join(config.separator)


def _kept_marker(frame: pl.DataFrame, variant: CaptionVariant, config: CaptionConfig) -> pl.Expr:
    """Today's layout from the groups (`kept, |||rest`): what a budget re-writes."""
    kept = pl.concat_list([_group(frame, g, variant) for g in KEPT_GROUPS]).list.join(config.separator)
    rest = pl.concat_list([_group(frame, g, variant) for g in REST_GROUPS]).list.join(config.separator)
    mark = config.keep_separator
    if mark is None:
        return pl.concat_list([kept, rest]).list.eval(pl.element().filter(pl.element() != "")).list.join(config.separator)
    glue = pl.when(kept == "").then(pl.lit("")).otherwise(pl.lit(config.separator))
    return kept + glue + pl.lit(mark) + rest


def _xml(frame: pl.DataFrame, variant: CaptionVariant, config: CaptionConfig) -> pl.Expr:
    ids = frame["id"].to_numpy()
    parts = []
    for at, name in enumerate(variant.groups()):
        items = _group(frame, name, variant)
        text = pl.lit(f"<{name}>") + items.list.join(config.separator) + pl.lit(f"</{name}>")
        if variant.empty_groups == "drop":
            keep_empty = pl.lit(False)
        elif variant.empty_groups == "keep":
            keep_empty = pl.lit(True)
        else:  # half: a fixed coin per (post, group)
            coin = shuffle_keys(0x786D6C, ids, np.full(len(ids), at, dtype=np.int64)) & np.uint64(1)
            keep_empty = pl.lit(pl.Series(coin == 0))
        parts.append(pl.when((items.list.len() > 0) | keep_empty).then(text).otherwise(None))
    if not parts:
        return pl.lit("")
    return pl.concat_list(parts).list.drop_nulls().list.join(" ")


def _text(frame: pl.DataFrame, variant: CaptionVariant, config: CaptionConfig) -> pl.Expr:
    fields = [variant.text_field] if variant.text_field else list(config.text_fields)
    cols = [pl.col(f"text_{f}") for f in fields if f"text_{f}" in frame.columns]
    return pl.coalesce(cols).fill_null("") if cols else pl.lit("")


def _mixed(frame: pl.DataFrame, variant: CaptionVariant, config: CaptionConfig) -> pl.Expr:
    tags, text = _ordered(frame, variant, config), _text(frame, variant, config)
    first, second = (tags, text) if variant.mix == "tags_then_text" else (text, tags)
    joiner = pl.lit(config.text_joiner)
    return (pl.when(first == "").then(second).when(second == "").then(first)
            .otherwise(first + joiner + second))


def variant_expr(frame: pl.DataFrame, variant: CaptionVariant, config: CaptionConfig) -> pl.Expr:
    if variant.kind == "kohaku":
        return pl.col("tag_caption" if "tag_caption" in frame.columns else "caption")
    make = {"ordered": _ordered, "xml": _xml, "text": _text, "mixed": _mixed}[variant.kind]
    return make(frame, variant, config)


# ---------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------
def _render(groups: dict[str, list[str]], variant: CaptionVariant, config: CaptionConfig, text: str = "",
            post: int = 0) -> str:
    """One post's variant string from its group lists and `text` (text, mixed; `post`: its id,
    for xml's `half` coin): the same text as the columnar path."""
    def listed(names: Sequence[str]) -> list[str]:
        return [t for g in names for t in groups[g]]

    if variant.kind == "ordered":
        return config.separator.join(listed(variant.groups()))
    if variant.kind == "text":
        return text
    if variant.kind == "mixed":
        tags = config.separator.join(listed(variant.groups()))
        first, second = (tags, text) if variant.mix == "tags_then_text" else (text, tags)
        return second if first == "" else first if second == "" else first + config.text_joiner + second
    if variant.kind == "xml":
        parts = []
        for at, g in enumerate(variant.groups()):
            if not groups[g] and not _keeps_empty(variant, post, at):
                continue
            parts.append(f"<{g}>{config.separator.join(groups[g])}</{g}>")
        return " ".join(parts)
    kept, rest = config.separator.join(listed(KEPT_GROUPS)), config.separator.join(listed(REST_GROUPS))
    if config.keep_separator is None:
        return config.separator.join(t for t in (kept, rest) if t)
    return kept + (config.separator if kept else "") + config.keep_separator + rest


def _keeps_empty(variant: CaptionVariant, post: int, at: int) -> bool:
    """Whether xml writes `<g></g>` for the empty group at position `at` of this post (as `_xml`)."""
    if variant.empty_groups != "half":
        return variant.empty_groups == "keep"
    coin = shuffle_keys(0x786D6C, np.array([post], dtype=np.int64), np.array([at], dtype=np.int64)) & np.uint64(1)
    return bool(coin[0] == 0)


# a sentence ends at . ! ? (also ASCII-closing … and CJK 。！？) before whitespace, or at a line break
_SENTENCE_END = re.compile(r"(?<=[.!?。！？…])\s+|\s*\n\s*")


def sentence_cuts(text: str) -> list[int]:
    """Where `text` may be cut to whole sentences, longest first: the ends of its sentences but
    the last (text[:cut] keeps the sentences before), never before the end of the first."""
    cuts = [m.start() for m in _SENTENCE_END.finditer(text) if text[:m.start()].strip() and text[m.end():].strip()]
    return sorted(set(cuts), reverse=True)


def _trim_post(groups: dict[str, list[str]], meta: list[str], general: list[str], variant: CaptionVariant,
               config: CaptionConfig, counter: TokenCounter, text: str = "", post: int = 0) -> tuple[str, int] | None:
    """The trimmed string and its tokens; None when the kept part alone is over the budget.
    Tags first (whole rest tags by `drop_order`), then, for text and mixed, whole sentences of
    the text from the end (the first sentence stays)."""
    budget = variant.max_tokens or 0
    rest_names = [g for g in REST_GROUPS if variant.kind == "kohaku" or g in variant.groups()]
    if variant.kind == "text":
        rest_names = []
    rest = [(g, k) for g in rest_names for k in range(len(groups[g]))]
    order = drop_order([groups[g][k] for g, k in rest], meta, general)
    cuts = sentence_cuts(text) if variant.kind in ("text", "mixed") else []
    dropped: set[int] = set()
    shown = text

    def current() -> dict[str, list[str]]:
        out = {g: list(v) for g, v in groups.items()}
        gone = {rest[i] for i in dropped}
        for g in rest_names:
            out[g] = [t for k, t in enumerate(groups[g]) if (g, k) not in gone]
        return out

    out = _render(groups, variant, config, shown, post)
    tokens = counter.count(out)
    for step in [*(("tag", i) for i in order), *(("text", c) for c in cuts)]:
        if tokens <= budget:
            return out, tokens
        if step[0] == "tag":
            dropped.add(step[1])
        else:
            shown = text[:step[1]]
        out = _render(current(), variant, config, shown, post)
        tokens = counter.count(out)
    return (out, tokens) if tokens <= budget else None


# what a budget never cuts, per kind (named in the refusal)
_KEPT = {"kohaku": "the count, character, copyright and artist tags", "ordered": "its count, character, copyright "
         "and artist tags", "xml": "its count, character, copyright and artist groups, nor the empty groups empty_groups keeps", "text": "the text's first sentence",
         "mixed": "its count, character, copyright and artist tags and the text's first sentence"}


def _apply_budget(frame: pl.DataFrame, name: str, variant: CaptionVariant, config: CaptionConfig,
                  counter: TokenCounter) -> pl.DataFrame:
    over = frame.with_row_index("_row").filter(pl.col(f"tokens_{name}") > variant.max_tokens)
    if over.height == 0:
        return frame
    texts = frame[f"variant_{name}"].to_list()
    tokens = frame[f"tokens_{name}"].to_numpy().copy()
    lists = over.select(pl.col("_row"), *(_group(over, g, variant).alias(g) for g in (*KEPT_GROUPS, *REST_GROUPS)))
    cols = {g: lists[g].to_list() for g in (*KEPT_GROUPS, *REST_GROUPS)}
    text = (over.select(_text(over, variant, config)).to_series().to_list() if variant.kind in ("text", "mixed")
            else [""] * over.height)
    refused = []
    for j, (row, post, meta, general) in enumerate(over.select("_row", "id", "tags_meta", "tags_general").iter_rows()):
        trimmed = _trim_post({g: cols[g][j] for g in cols}, meta, general, variant, config, counter, text[j], post)
        if trimmed is None:
            refused.append(post)
            continue
        texts[row], tokens[row] = trimmed
    if refused:
        shown = ", ".join(map(str, refused[:20])) + (" …" if len(refused) > 20 else "")
        raise BudgetError(f"variant {name}: the kept part alone of {len(refused)} posts ({shown}) is over "
                          f"max_tokens = {variant.max_tokens} (a {variant.kind} budget never cuts "
                          f"{_KEPT[variant.kind]}): raise the budget or select those posts out.")
    return frame.with_columns(pl.Series(f"variant_{name}", texts, dtype=pl.String),
                              pl.Series(f"tokens_{name}", tokens, dtype=pl.Int32))


# ---------------------------------------------------------------------------------------------
# A page
# ---------------------------------------------------------------------------------------------
def add_variants(frame: pl.DataFrame, el: Elements, config: CaptionConfig, counter: TokenCounter) -> pl.DataFrame:
    """`variant_<name>` and `tokens_<name>` of every variant; `caption` becomes the `.txt`
    variant when it is not `kohaku`."""
    variants = config.variants.all()
    numeric = {v.name: _numeric(frame, v, config) for v in variants}
    grouped = any(not numeric[v.name] and v.kind not in ("text", "kohaku") for v in variants) or any(v.max_tokens for v in variants)
    if grouped:
        frame = frame.hstack(group_lists(el.pi, el.row, el.tags, el.posts))
    runs = caption_runs(el, config) if any(numeric[v.name] and v.kind != "kohaku" for v in variants) else None
    for v in variants:
        frame = frame.with_columns(_variant_column(frame, el, runs, v, numeric[v.name], config, counter))
        if v.max_tokens:
            frame = _apply_budget(frame, v.name, v, config, counter)
    if config.variants.txt != "kohaku" or any(v.name == "kohaku" and v.max_tokens for v in variants):
        frame = frame.with_columns(caption=pl.col(f"variant_{config.variants.txt}"))
    return frame.drop([c for c in frame.columns if c.startswith("g_")])


def _variant_column(frame: pl.DataFrame, el: Elements, runs: Runs | None, v: CaptionVariant, numeric: bool,
                    config: CaptionConfig, counter: TokenCounter) -> list[pl.Series]:
    """The variant's text and token count."""
    if not numeric:
        expr = _kept_marker(frame, v, config) if v.kind == "kohaku" and v.max_tokens else variant_expr(frame, v, config)
        text = frame.select(expr.alias("_v")).to_series()
        tokens = counter.column(text)
    elif v.kind == "kohaku":
        text = frame.select(_kept_marker(frame, v, config)).to_series() if v.max_tokens else frame["caption"]
        tokens = piece_tokens(_kohaku_pieces(el, config), el.tags, counter, el.posts)
    else:
        assert runs is not None
        text = runs_text(runs, v, el.tags, config)
        tokens = piece_tokens(_runs_pieces(runs, v, config, el.tags.caption_start), el.tags, counter, el.posts)
    return [text.alias(f"variant_{v.name}"), pl.Series(f"tokens_{v.name}", tokens, dtype=pl.Int32)]


def token_stats(frames, config: CaptionConfig) -> dict[str, dict[str, float]]:
    """Token-length distribution per variant over caption frames: quantiles, max, and the share
    past each of sd-scripts' 75/150/225 windows."""
    names = variant_names(config)
    columns = [f"tokens_{n}" for n in names]
    counts = pl.concat([f.select(columns) for f in frames]) if frames else pl.DataFrame(schema={c: pl.Int32 for c in columns})
    out: dict[str, dict[str, float]] = {}
    for name, col in zip(names, columns):
        s = counts[col]
        out[name] = {"posts": s.len(), "mean": float(s.mean() or 0), "p50": float(s.quantile(0.5) or 0),
                     "p90": float(s.quantile(0.9) or 0), "p99": float(s.quantile(0.99) or 0), "max": int(s.max() or 0),
                     **{f"past_{w}": float((s > w).mean() or 0) for w in (75, 150, 225)}}
    return out


def variant_names(config: CaptionConfig) -> tuple[str, ...]:
    return tuple(v.name for v in config.variants.all())


__all__ = [
    "BudgetError", "Elements", "Pieces", "Runs", "TokenCounter", "add_variants", "caption_runs", "count_caption_rows",
    "counter_for",
    "piece_tokens", "runs_text",
    "variant_expr", "variant_names", "wants_variants",
]
