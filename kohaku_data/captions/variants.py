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

Budgets (`max_tokens`, kohaku and ordered): a caption over it loses whole tags after the keep
separator by `kohaku_data.train.captions.drop_order` — first the meta tags, then the general
tags, each most frequent first (Danbooru popularity: the least informative go first), then the
other tags after the separator from the end (attached bands, quality, rating, year) — until it
fits. The kept part (count tags, characters, series, artists) is never cut: a recipe whose kept
part alone is over the budget is refused, naming the posts. The reader truncates by the same rule.

Variants are columns only when the recipe adds variants (`wants_variants`) or the caller asks
(builds store every sample's token counts); a plain `kdata caption` writes today's columns.

Token counts are exact: a pre-token never spans whitespace (CLIP's cleaning and pattern are
local between spaces), so a text's count is the sum over pieces that each end in whitespace.
With a separator ending in a space, kohaku, ordered and xml (`drop`) variants are made in the
numeric pass from the layout's elements (`Pieces`: per element a strings row and an affix
kind — separator, `<group>`, `</group>`, artist prefix, or nothing at the end of a post), and
counted as a per-post sum of per-(row, kind) counts, each counted once per job and kept on the
prepared tag table. Other variants (text, mixed, attached bands, curated captions, kept empty
xml groups, other separators) are made from the group lists and counted per space-separated
piece (`TokenCounter.column`). tests/test_caption_variants.py holds both ways equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kohaku_data.captions.layout import (
    CAPTION_CODE, G_ARTIST, G_MARK, GROUP_CODES, PreparedTags, group_lists, row_groups, shuffle_keys,
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
               "piece_hit_rate": self.piece_hits / self.piece_lookups if self.piece_lookups else 0.0}
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


def _variant_order(el: Elements, variant: CaptionVariant) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(post index, plain strings row, caption group, position in the variant's order) of the
    elements this variant shows, in its order (stable: in-group order as in today's caption)."""
    tags = el.tags
    position = np.full(16, -1, dtype=np.int64)
    for at, name in enumerate(variant.groups()):
        if name in GROUP_CODES:
            position[GROUP_CODES[name]] = at
    groups = _cached_row_groups(tags)[el.row].astype(np.int64)
    pos = np.where(groups >= 0, position[groups], -1)
    keep = (pos >= 0) & (groups != G_MARK)
    start, height = tags.caption_start, tags.prefixed_offset
    row = el.row[keep]
    row = np.where(row >= start + height, row - height, row)
    pi, groups, pos = el.pi[keep], groups[keep], pos[keep]
    order = np.argsort(pi * 16 + pos, kind="stable")
    return pi[order], row[order], groups[order], pos[order]


def _ordered_pieces(el: Elements, variant: CaptionVariant, config: CaptionConfig) -> Pieces:
    pi, row, groups, _ = _variant_order(el, variant)
    last = _post_ends(pi).astype(np.int64)
    base = el.tags.caption_start
    if not variant.artist_prefix:
        return Pieces(pi, row, last, last, ("", ""), (config.separator, ""), 2, base)
    artist = (groups == G_ARTIST).astype(np.int64)
    pre = variant.artist_prefix
    return Pieces(pi, row, artist * 2 + last, last, ("", "", pre, pre), (config.separator, "") * 2, 2, base)


def _xml_pieces(el: Elements, variant: CaptionVariant, config: CaptionConfig) -> Pieces:
    """`<g>a, b</g> <h>c</h>`: slot bits first in group (1), last in group (2), last of post (4)."""
    pi, row, groups, pos = _variant_order(el, variant)
    run = pi * 16 + pos
    first = np.ones(len(run), dtype=bool)
    first[1:] = run[1:] != run[:-1]
    last_group = _post_ends(run)
    slot = first + 2 * last_group + 4 * _post_ends(pi)
    before, after = [], []
    for name in variant.groups():
        pre = variant.artist_prefix if name == "artist" else ""
        for bits in range(8):
            closing, end = bits & 2, bits & 4
            before.append((f"<{name}>" if bits & 1 else "") + pre)
            after.append((f"</{name}>" if closing else "") + ("" if end else " " if closing else config.separator))
    return Pieces(pi, row, pos * 8 + slot, slot, tuple(before), tuple(after), 8, el.tags.caption_start)


def piece_texts(p: Pieces, tags: PreparedTags, posts: int) -> pl.Series:
    """Each post's text (\"\" for a post without pieces)."""
    text = (pl.Series(p.before, dtype=pl.String).gather(p.affix) + tags.strings.gather(p.row)
            + pl.Series(p.after, dtype=pl.String).gather(p.affix))
    joined = pl.DataFrame({"_pi": p.pi, "_t": text}).with_columns(pl.col("_pi").set_sorted()).group_by(
        "_pi", maintain_order=True).agg(pl.col("_t").str.join(""))
    if joined.height == posts:
        return joined["_t"]
    full = pl.DataFrame({"_pi": np.arange(posts, dtype=p.pi.dtype)}).join(joined, on="_pi", how="left",
                                                                         maintain_order="left")
    return full["_t"].fill_null("")


def piece_tokens(p: Pieces, tags: PreparedTags, counter: "TokenCounter", posts: int) -> np.ndarray:
    """Tokens of each post's text: the sum of its pieces' counts (exact when every piece but a
    post's last ends in whitespace). Each (row, slot) is counted once per job, on `tags.cache`."""
    key = ("tokens", counter.tokenizer.name, p.before, p.after, p.base)
    cache = tags.cache.get(key)
    if cache is None:
        cache = tags.cache.setdefault(key, np.full((len(tags.strings) - p.base, p.slots), -1, dtype=np.int32))
    r = p.row - p.base
    got = cache[r, p.slot]
    miss = got < 0
    if miss.any():
        code, at = np.unique(r[miss] * p.slots + p.slot[miss], return_index=True)
        texts = tags.strings.gather(code // p.slots + p.base).to_list()
        affixes = p.affix[miss][at].tolist()
        cache[code // p.slots, code % p.slots] = [
            counter.count(p.before[a] + t + p.after[a]) for a, t in zip(affixes, texts)]
        got = cache[r, p.slot]
    return np.bincount(p.pi, weights=got, minlength=posts).astype(np.int32)


def _numeric_pieces(frame: pl.DataFrame, el: Elements, v: CaptionVariant, config: CaptionConfig) -> Pieces | None:
    """This variant's pieces, or None when it is made from the group lists and strings."""
    if not config.separator.endswith(" "):  # pieces would not end in whitespace
        return None
    attached = "attached" in v.groups() and any(c.startswith("attached_") for c in frame.columns)
    if v.kind == "kohaku":
        return None if "tag_caption" in frame.columns else _kohaku_pieces(el, config)
    if v.kind == "ordered" and not attached:
        return _ordered_pieces(el, v, config)
    if v.kind == "xml" and not attached and v.empty_groups == "drop":
        return _xml_pieces(el, v, config)
    return None


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
def _render(groups: dict[str, list[str]], variant: CaptionVariant, config: CaptionConfig) -> str:
    """One post's variant string from its group lists (the same text as the columnar path)."""
    def listed(names: Sequence[str]) -> list[str]:
        return [t for g in names for t in groups[g]]

    if variant.kind == "ordered":
        return config.separator.join(listed(variant.groups()))
    kept, rest = config.separator.join(listed(KEPT_GROUPS)), config.separator.join(listed(REST_GROUPS))
    if config.keep_separator is None:
        return config.separator.join(t for t in (kept, rest) if t)
    return kept + (config.separator if kept else "") + config.keep_separator + rest


def _trim_post(groups: dict[str, list[str]], meta: list[str], general: list[str], variant: CaptionVariant,
               config: CaptionConfig, counter: TokenCounter) -> tuple[str, int] | None:
    """The trimmed string and its tokens; None when the kept part alone is over the budget."""
    budget = variant.max_tokens or 0
    rest_names = [g for g in REST_GROUPS if variant.kind == "kohaku" or g in variant.groups()]
    rest = [(g, k) for g in rest_names for k in range(len(groups[g]))]
    order = drop_order([groups[g][k] for g, k in rest], meta, general)
    dropped: set[int] = set()

    def current() -> dict[str, list[str]]:
        out = {g: list(v) for g, v in groups.items()}
        gone = {rest[i] for i in dropped}
        for g in rest_names:
            out[g] = [t for k, t in enumerate(groups[g]) if (g, k) not in gone]
        return out

    text = _render(groups, variant, config)
    tokens = counter.count(text)
    for i in order:
        if tokens <= budget:
            return text, tokens
        dropped.add(i)
        text = _render(current(), variant, config)
        tokens = counter.count(text)
    return (text, tokens) if tokens <= budget else None


def _apply_budget(frame: pl.DataFrame, name: str, variant: CaptionVariant, config: CaptionConfig,
                  counter: TokenCounter) -> pl.DataFrame:
    over = frame.with_row_index("_row").filter(pl.col(f"tokens_{name}") > variant.max_tokens)
    if over.height == 0:
        return frame
    texts = frame[f"variant_{name}"].to_list()
    tokens = frame[f"tokens_{name}"].to_numpy().copy()
    lists = over.select(pl.col("_row"), *(_group(over, g, variant).alias(g) for g in (*KEPT_GROUPS, *REST_GROUPS)))
    cols = {g: lists[g].to_list() for g in (*KEPT_GROUPS, *REST_GROUPS)}
    refused = []
    for j, (row, post, meta, general) in enumerate(over.select("_row", "id", "tags_meta", "tags_general").iter_rows()):
        trimmed = _trim_post({g: cols[g][j] for g in cols}, meta, general, variant, config, counter)
        if trimmed is None:
            refused.append(post)
            continue
        texts[row], tokens[row] = trimmed
    if refused:
        shown = ", ".join(map(str, refused[:20])) + (" …" if len(refused) > 20 else "")
        raise BudgetError(f"variant {name}: the kept part alone of {len(refused)} posts ({shown}) is over "
                          f"max_tokens = {variant.max_tokens}: raise the budget or select those posts out.")
    return frame.with_columns(pl.Series(f"variant_{name}", texts, dtype=pl.String),
                              pl.Series(f"tokens_{name}", tokens, dtype=pl.Int32))


# ---------------------------------------------------------------------------------------------
# A page
# ---------------------------------------------------------------------------------------------
def add_variants(frame: pl.DataFrame, el: Elements, config: CaptionConfig, counter: TokenCounter) -> pl.DataFrame:
    """`variant_<name>` and `tokens_<name>` of every variant; `caption` becomes the `.txt`
    variant when it is not `kohaku`."""
    variants = config.variants.all()
    pieces = {v.name: _numeric_pieces(frame, el, v, config) for v in variants}
    grouped = any(pieces[v.name] is None and v.kind not in ("text", "kohaku") for v in variants) or any(v.max_tokens for v in variants)
    if grouped:
        frame = frame.hstack(group_lists(el.pi, el.row, el.tags, el.posts))
    for v in variants:
        frame = frame.with_columns(_variant_column(frame, el, v, pieces[v.name], config, counter))
        if v.max_tokens:
            frame = _apply_budget(frame, v.name, v, config, counter)
    if config.variants.txt != "kohaku" or any(v.name == "kohaku" and v.max_tokens for v in variants):
        frame = frame.with_columns(caption=pl.col(f"variant_{config.variants.txt}"))
    return frame.drop([c for c in frame.columns if c.startswith("g_")])


def _variant_column(frame: pl.DataFrame, el: Elements, v: CaptionVariant, pieces: Pieces | None,
                    config: CaptionConfig, counter: TokenCounter) -> list[pl.Series]:
    """The variant's text and token count."""
    if pieces is None:
        expr = _kept_marker(frame, v, config) if v.kind == "kohaku" and v.max_tokens else variant_expr(frame, v, config)
        text = frame.select(expr.alias("_v")).to_series()
        tokens = counter.column(text)
    else:
        if v.kind != "kohaku":
            text = piece_texts(pieces, el.tags, el.posts)
        elif v.max_tokens:
            text = frame.select(_kept_marker(frame, v, config)).to_series()
        else:
            text = frame["caption"]
        tokens = piece_tokens(pieces, el.tags, counter, el.posts)
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
    "BudgetError", "Elements", "Pieces", "TokenCounter", "add_variants", "counter_for", "piece_texts", "piece_tokens",
    "variant_expr", "variant_names", "wants_variants",
]
