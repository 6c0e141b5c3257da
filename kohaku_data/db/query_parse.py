"""Parse Danbooru-style tag queries into a `ParsedQuery` (pure: no database).

Syntax (Danbooru's current one, `PostQuery::Parser`):

    1girl solo          every tag (AND; `a and b` means the same)
    -comic              not this tag (or group, or metatag: `-(a b)`, `-rating:e`, `-score:<0`)
    cat_ears or dog_ears, (a or b) c      `or` binds looser than juxtaposition: `a b or c` is `(a b) or c`
    ~cat_ears ~dog_ears the ~ items of one group (one pair of parentheses, or the whole query) form
                        one OR group, as on Danbooru: `~a ~b c` is `(a or b) c`
    *_hair  hatsune_miku*  wildcards over tag names (`*` matches any run of characters): the
                        MAX_WILDCARD_TAGS most popular matching tags, OR-ed (Danbooru's cap, 100)
    rating:g,s          general/sensitive/questionable/explicit (letters or words, comma list)
    score:>10  favcount:10..100  id:..5000000  width:>=1024  height:<2000  mpixels:>=1  ratio:0.5..2
    id:1,2,3  score:1,5,10  score:1,5..10   a comma list of values or ranges matches any of them
    date:2020-01-01..2023-12-31  year:2021  filetype:png,jpg  order:score

Ranges: `N`, `>N`, `>=N`, `<N`, `<=N`, `a..b` (inclusive), `..b` (<= b), `a..` (>= a).
`ratio` is width/height rounded to 2 decimals like Danbooru, and takes `16:9` as well as `1.78`.
`order:` may appear once, anywhere but under `-` or `~`; like Danbooru's, it matches every post
(`a or b order:score` is `a or b`, sorted).

Dates: `post.created_at` holds ISO strings with Danbooru's server offset (US Eastern, e.g.
`2023-03-17T03:50:48.762-04:00`). `date:`/`year:` compare the *date as written* (the local
calendar date of that offset), not the UTC date: that is what Danbooru shows on the post page,
it needs no time-zone arithmetic, and it compares as a plain string range on the column.
`order:date` likewise sorts the strings as written (local time; posts an hour apart around a
DST change may swap places, which only matters within that hour).

The result is a tree of `TagTerm`, `Wildcard`, `MetaFilter`, `Not`, `And`, `Or` (plus `ALL`
for the empty query), already simplified: `~` groups rewritten to `Or`, nested And/Or
flattened, double negations removed, and negation folded into metatags.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date
from typing import Union

from kohaku_data.db.enums import Rating
from kohaku_data.errors import KdataError


class QueryError(KdataError):
    """A tag query that cannot be run: bad syntax, unknown metatag or value, unknown tag."""


# Danbooru's PostQueryBuilder::MAX_WILDCARD_TAGS: a `blah*` search uses at most this many
# tags, the most popular first (ties by name), so a pattern like `*` stays a bounded query.
MAX_WILDCARD_TAGS = 100


@dataclass(frozen=True)
class Range:
    """Closed/open bounds; `None` means unbounded. Exact values have lo == hi, both inclusive."""

    lo: float | str | None = None
    hi: float | str | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True


@dataclass(frozen=True)
class MetaFilter:
    """One filter metatag: `values` for list metatags (rating, filetype), else `ranges` (a
    post matches when its value lies in any of them)."""

    name: str  # canonical metatag name, a key of RANGE_METATAGS or LIST_METATAGS
    negated: bool = False
    ranges: tuple[Range, ...] = ()
    values: tuple[int | str, ...] = ()

    @property
    def range(self) -> Range | None:
        """The one range of a single-range filter (None for lists and unions)."""
        return self.ranges[0] if len(self.ranges) == 1 else None


@dataclass(frozen=True)
class TagTerm:
    name: str  # lower-cased as typed; aliases are resolved against the DB later


@dataclass(frozen=True)
class Wildcard:
    pattern: str  # lower-cased, `*` = any run of characters; every other character is literal


@dataclass(frozen=True)
class Not:
    child: "Node"


@dataclass(frozen=True)
class And:
    children: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    children: tuple["Node", ...]


Node = Union[TagTerm, Wildcard, MetaFilter, Not, And, Or]
ALL = And(())  # the empty query: every post


@dataclass(frozen=True)
class Order:
    name: str  # key of ORDER_KEYS
    descending: bool


@dataclass(frozen=True)
class ParsedQuery:
    tree: Node = ALL
    order: Order | None = None

    # The parts of a top-level conjunction, for callers and tests that look at simple queries.
    @property
    def include(self) -> tuple[str, ...]:
        return tuple(c.name for c in _top(self.tree) if isinstance(c, TagTerm))

    @property
    def exclude(self) -> tuple[str, ...]:
        return tuple(c.child.name for c in _top(self.tree)
                     if isinstance(c, Not) and isinstance(c.child, TagTerm))

    @property
    def any_of(self) -> tuple[str, ...]:
        groups = [c for c in _top(self.tree) if isinstance(c, Or)
                  and all(isinstance(g, TagTerm) for g in c.children)]
        return tuple(g.name for g in groups[0].children) if len(groups) == 1 else ()

    @property
    def filters(self) -> tuple[MetaFilter, ...]:
        return tuple(c for c in _top(self.tree) if isinstance(c, MetaFilter))

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.name for n in walk(self.tree) if isinstance(n, TagTerm)))

    @property
    def has_tags(self) -> bool:
        return any(isinstance(n, (TagTerm, Wildcard)) for n in walk(self.tree))


def _top(tree: Node) -> tuple[Node, ...]:
    return tree.children if isinstance(tree, And) else (tree,)


def walk(node: Node):
    """Every node of the tree, parents before children."""
    yield node
    if isinstance(node, (And, Or)):
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Not):
        yield from walk(node.child)


# metatag → kind of value; aliases map Danbooru's spellings to the canonical name.
RANGE_METATAGS = {
    "id": "int", "score": "int", "favcount": "int", "width": "int", "height": "int",
    "mpixels": "float", "ratio": "ratio", "date": "date", "year": "year",
}
LIST_METATAGS = ("rating", "filetype")
METATAG_ALIASES = {"fav_count": "favcount", "created_at": "date", "age": None}
# order:NAME → (sort key name, descending). Danbooru's defaults: numbers sort high first.
ORDER_KEYS: dict[str, tuple[str, bool]] = {
    "id": ("id", False), "id_asc": ("id", False), "id_desc": ("id", True),
    "score": ("score", True), "score_desc": ("score", True), "score_asc": ("score", False),
    "favcount": ("favcount", True), "favcount_desc": ("favcount", True),
    "favcount_asc": ("favcount", False),
    "date": ("date", True), "date_desc": ("date", True), "date_asc": ("date", False),
    "created_at": ("date", True), "created_at_desc": ("date", True),
    "created_at_asc": ("date", False),
    "mpixels": ("mpixels", True), "mpixels_desc": ("mpixels", True),
    "mpixels_asc": ("mpixels", False),
    "filesize": ("filesize", True), "filesize_desc": ("filesize", True),
    "filesize_asc": ("filesize", False),
    "landscape": ("ratio", True), "portrait": ("ratio", False),
}
FILETYPE_ALIASES = {"jpeg": "jpg"}
ALL_METATAGS = (*RANGE_METATAGS, *LIST_METATAGS, "order")
RANGE_FORMS = "N, >N, >=N, <N, <=N, A..B, ..B, A.. or a comma list of these"

_RANGE_SHAPED = re.compile(r"^(>=|<=|>|<|\.\.)|\.\.")
_KEYWORD = re.compile(r"(?i)(and|or)(?=\s|$)")
_SPACE = re.compile(r"\s*")


# -- parser -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Opt:
    """A `~` item before rewriting: its parent turns all its `~` children into one Or."""

    child: Node


@dataclass(frozen=True)
class _OrderTerm:
    order: Order


class _Parser:
    """Recursive descent over Danbooru's grammar (app/logical/post_query/parser.rb):

        or_clause  = and_clause ["or" or_clause]      and_clause = factors ["and" and_clause]
        factors    = factor {factor}                  factor     = "-" expr | "~" expr | expr
        expr       = "(" or_clause ")" | term

    A term is a run of non-space characters; inside parentheses, trailing `)` that would leave
    a tag's own parentheses unbalanced close the group instead (`(foo_(bar))` is `foo_(bar)`).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0  # unclosed '('

    def parse(self):
        self._space()
        if self.pos == len(self.text):
            return ALL
        node = self._or_clause()
        self._space()
        if self.pos < len(self.text):
            raise QueryError(
                f"unexpected {self.text[self.pos:]!r}: every ')' needs an opening '(' before it")
        return node

    def _space(self) -> None:
        self.pos = _SPACE.match(self.text, self.pos).end()

    def _keyword(self, word: str) -> bool:
        self._space()
        m = _KEYWORD.match(self.text, self.pos)
        if m and m.group(1).lower() == word:
            self.pos = m.end()
            return True
        return False

    def _or_clause(self):
        left = self._and_clause()
        if self._keyword("or"):
            return Or((left, self._operand("or")))
        return left

    def _and_clause(self):
        left = self._factors()
        if self._keyword("and"):
            right = self._operand("and", clause=self._and_clause)
            return And((left, right))
        return left

    def _operand(self, word: str, clause=None):
        self._space()
        if self._at_end_of_group():
            raise QueryError(f"'{word}' needs a tag, metatag or group after it")
        return (clause or self._or_clause)()

    def _at_end_of_group(self) -> bool:
        return self.pos == len(self.text) or self.text[self.pos] == ")" \
            or bool(_KEYWORD.match(self.text, self.pos))

    def _factors(self):
        factors = []
        while True:
            self._space()
            if self._at_end_of_group():
                break
            factors.append(self._factor())
        if not factors:
            where = self.text[self.pos:self.pos + 10] or "the end"
            raise QueryError(f"expected a tag, metatag or '(' before {where!r}")
        return And(tuple(factors))

    def _factor(self):
        prefix = self.text[self.pos]
        if prefix in "-~":
            self.pos += 1
            self._space()
            if self.pos == len(self.text) or self.text[self.pos] in "-~)":
                raise QueryError(f"expected a tag or metatag after '{prefix}'")
            inner = self._expr()
            return Not(inner) if prefix == "-" else _Opt(inner)
        return self._expr()

    def _expr(self):
        if self.text[self.pos] == "(":
            self.pos += 1
            self.depth += 1
            self._space()
            if self.pos < len(self.text) and self.text[self.pos] == ")":
                raise QueryError("empty parentheses '()': put tags or metatags inside")
            node = self._or_clause()
            self._space()
            if self.pos == len(self.text) or self.text[self.pos] != ")":
                raise QueryError("unclosed '(': add the matching ')'")
            self.pos += 1
            self.depth -= 1
            return node
        return self._term()

    def _term(self):
        end = self.pos
        while end < len(self.text) and not self.text[end].isspace():
            end += 1
        token = self.text[self.pos:end]
        meta = _metatag_of(token)
        # Give back the ')' that close open groups; a tag keeps those that balance its own '('.
        closers = 0
        while closers < self.depth and token.endswith(")") and (meta or not _balanced(token)):
            token = token[:-1]
            closers += 1
        self.pos = end - closers
        if not token:
            raise QueryError("expected a tag or metatag before ')'")
        return _leaf(token, meta)


def _balanced(token: str) -> bool:
    depth = 0
    for ch in token:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def _leaf(token: str, meta: str | None):
    if meta is None:
        name = token.lower()
        return Wildcard(name) if "*" in name else TagTerm(name)
    if meta == "order":
        return _OrderTerm(_parse_order(token))
    return _parse_filter(meta, token.split(":", 1)[1], negated=False)


def parse_query(text: str) -> ParsedQuery:
    """Parse a query string; raises QueryError with what is accepted on malformed input."""
    raw = _Parser(text).parse()
    orders: list[Order] = []
    tree = _simplify(_rewrite(raw, orders))
    if len(orders) > 1:
        raise QueryError("more than one order: metatag; give at most one")
    return ParsedQuery(tree=tree, order=orders[0] if orders else None)


def _rewrite(node, orders: list[Order], negated: bool = False):
    """`~` items → one Or per parent; order: terms taken out wherever they stand (as on
    Danbooru, an order: term matches every post, so `a or b order:score` is `a or b` sorted),
    but never under `-` or `~`, where that reading would surprise."""
    if isinstance(node, _OrderTerm):
        if negated:
            raise QueryError("order: cannot be negated; put it outside any '-(...)'")
        orders.append(node.order)
        return ALL
    if isinstance(node, _Opt):  # a ~ item whose parent is not a conjunction (cannot parse)
        return _rewrite(node.child, orders, negated)
    if isinstance(node, Not):
        return Not(_rewrite(node.child, orders, negated=True))
    if isinstance(node, (And, Or)):
        opts = [c.child for c in node.children if isinstance(c, _Opt)]
        rest = [c for c in node.children if not isinstance(c, _Opt)]
        children = [_rewrite(c, orders, negated) for c in rest]
        if opts:
            if any(isinstance(o, _OrderTerm) for o in opts):
                raise QueryError("order: cannot be in a ~ group; only tags and metatags can")
            children.append(Or(tuple(_rewrite(o, orders, negated) for o in opts)))
        return type(node)(tuple(children))
    return node


def _simplify(node: Node) -> Node:
    """Flatten nested And/Or, drop single-child groups and double negations, fold `-` into
    metatags (so the engines see `MetaFilter(negated=True)` rather than `Not`)."""
    if isinstance(node, Not):
        child = _simplify(node.child)
        if isinstance(child, Not):
            return child.child
        if isinstance(child, MetaFilter):
            return MetaFilter(child.name, not child.negated, child.ranges, child.values)
        if child == ALL:
            return Or(())  # matches nothing
        return Not(child)
    if isinstance(node, (And, Or)):
        kind = type(node)
        flat: list[Node] = []
        for child in map(_simplify, node.children):
            if isinstance(child, kind):
                flat.extend(child.children)
            elif child == ALL and kind is And:
                continue
            else:
                flat.append(child)
        if kind is Or and any(c == ALL for c in flat):
            return ALL
        flat = list(dict.fromkeys(flat))
        return flat[0] if len(flat) == 1 else kind(tuple(flat))
    return node


def _metatag_of(body: str) -> str | None:
    """The canonical metatag name of `body`, None for a plain tag (tags may contain ':')."""
    if ":" not in body:
        return None
    key, value = body.split(":", 1)
    key = key.lower()
    if key in RANGE_METATAGS or key in LIST_METATAGS or key == "order":
        return key
    if key in METATAG_ALIASES and METATAG_ALIASES[key]:
        return METATAG_ALIASES[key]
    # Tags like `re:zero_kara_hajimeru_isekai_seikatsu` or `:d` are real: only a prefix that
    # looks like a misspelt metatag, or a range-shaped value, is treated as a bad metatag.
    close = difflib.get_close_matches(key, ALL_METATAGS, n=3, cutoff=0.75)
    if key.isidentifier() and (close or (_RANGE_SHAPED.search(value) and value[-1:].isdigit())):
        hint = f" (did you mean {', '.join(m + ':' for m in close)}?)" if close else ""
        raise QueryError(
            f"unknown metatag {key + ':'!r}{hint}; accepted metatags: "
            + ", ".join(m + ":" for m in ALL_METATAGS)
        )
    return None


def _parse_order(body: str) -> Order:
    value = body.split(":", 1)[1].lower()
    if value not in ORDER_KEYS:
        raise QueryError(f"unknown order {value!r}; accepted: order:" + ", order:".join(ORDER_KEYS))
    name, descending = ORDER_KEYS[value]
    return Order(name, descending)


def _parse_filter(name: str, value: str, negated: bool) -> MetaFilter:
    if not value:
        raise QueryError(f"{name}: needs a value")
    if name == "rating":
        return MetaFilter(name, negated, values=tuple(_ratings(value)))
    if name == "filetype":
        exts = [FILETYPE_ALIASES.get(v, v) for v in value.lower().split(",")]
        if not all(re.fullmatch(r"[a-z0-9]+", e) for e in exts):
            raise QueryError(f"filetype:{value}: expected a comma list of extensions like png,jpg")
        return MetaFilter(name, negated, values=tuple(dict.fromkeys(exts)))
    kind = RANGE_METATAGS[name]
    label = f"{name}:{value}"
    ranges = [_parse_range(part, lambda v: _scalar(kind, v), label, kind)
              for part in value.split(",")]
    if kind == "year":  # a year range is a date range over whole years
        ranges = [_year_to_dates(r) for r in ranges]
        name = "date"
    elif kind == "date":
        ranges = [_date_to_bounds(r) for r in ranges]
    return MetaFilter(name, negated, ranges=tuple(dict.fromkeys(ranges)))


def _ratings(value: str) -> list[int]:
    try:
        return sorted({int(Rating.from_letter(v)) for v in value.split(",")})
    except ValueError:
        raise QueryError(
            f"rating:{value}: expected a comma list of g, s, q, e "
            "(or general, sensitive, questionable, explicit)"
        ) from None


def _parse_range(value: str, scalar, label: str, kind: str) -> Range:
    try:
        for op, lo_inc, hi_inc in ((">=", True, True), ("<=", True, True), (">", False, True),
                                   ("<", True, False)):
            if value.startswith(op):
                v = scalar(value[len(op):])
                return Range(lo=v, lo_inclusive=lo_inc) if op[0] == ">" else Range(
                    hi=v, hi_inclusive=hi_inc)
        if ".." in value:
            lo, hi = value.split("..", 1)
            if not lo and not hi:
                raise ValueError
            return Range(lo=scalar(lo) if lo else None, hi=scalar(hi) if hi else None)
        v = scalar(value)
        return Range(lo=v, hi=v)
    except ValueError:
        raise QueryError(
            f"{label}: malformed value; accepted forms: {RANGE_FORMS} where N is {_KIND_HELP[kind]}"
        ) from None


_KIND_HELP = {
    "int": "an integer", "float": "a number", "ratio": "a number or W:H (e.g. 16:9)",
    "date": "a date YYYY-MM-DD", "year": "a year like 2021",
}


def _scalar(kind: str, text: str) -> float | int | str:
    if kind in ("int", "year"):
        if not re.fullmatch(r"-?\d+", text):
            raise ValueError(text)
        return int(text)
    if kind == "float":
        return _finite(text)
    if kind == "ratio":
        if ":" in text:
            w, h = text.split(":", 1)
            if _finite(h) == 0:
                raise ValueError(text)
            return round(_finite(w) / _finite(h), 2)
        return round(_finite(text), 2)
    return date.fromisoformat(_strict_date(text)).isoformat()


def _finite(text: str) -> float:
    if not re.fullmatch(r"-?(\d+\.?\d*|\.\d+)", text):
        raise ValueError(text)
    return float(text)


def _strict_date(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(text)
    return text


def _next_day(iso: str) -> str:
    """The smallest string after every `created_at` of that day ('~' sorts after 'T')."""
    return iso + "~"


def _date_to_bounds(rng: Range) -> Range:
    """Date bounds → half-open bounds on the `created_at` string (`lo <= created_at < hi`).

    `created_at` starts with its YYYY-MM-DD date, so comparing the whole string against dates
    is the same as comparing its date prefix, and needs no function on the column.
    """
    lo = rng.lo if rng.lo is None or rng.lo_inclusive else _next_day(str(rng.lo))
    hi = rng.hi if rng.hi is None or not rng.hi_inclusive else _next_day(str(rng.hi))
    return Range(lo=lo, hi=hi, lo_inclusive=True, hi_inclusive=False)


def _year_to_dates(rng: Range) -> Range:
    def first(year: float | str | None, inclusive: bool) -> str | None:
        if year is None:
            return None
        y = int(year) + (0 if inclusive else 1)
        return f"{y:04d}-01-01"

    lo = first(rng.lo, rng.lo_inclusive)
    hi = None if rng.hi is None else first(rng.hi, not rng.hi_inclusive)
    return Range(lo=lo, hi=hi, lo_inclusive=True, hi_inclusive=False)
