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
from datetime import date, datetime, timedelta, timezone
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

    # canonical metatag name, a key of RANGE_METATAGS or LIST_METATAGS; "is" holds predicate
    # keys of query_plan.PREDICATES (status:, is:, has:, parent:none, child:any, ...)
    name: str
    negated: bool = False
    ranges: tuple[Range, ...] = ()
    values: tuple[int | str, ...] = ()

    @property
    def range(self) -> Range | None:
        """The one range of a single-range filter (None for lists and unions)."""
        return self.ranges[0] if len(self.ranges) == 1 else None

    @property
    def shows_deleted(self) -> bool:
        """An is:/status: filter that, as on Danbooru, lifts the default hiding of deleted posts."""
        return self.name == "is" and bool({"all", "active", "deleted"} & set(self.values))


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
    limit: int | None = None  # limit:N, at most N posts
    sample: int | None = None  # random:N, N posts drawn by the seeded random order
    seed: int = 0  # seed:S for order:random and random:N (the same seed, the same posts)
    show_deleted: bool = False  # an is:/status: metatag that shows deleted posts (Danbooru's rule)

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
    "mpixels": "float", "ratio": "ratio", "date": "date", "year": "year", "age": "age",
    "filesize": "filesize", "upvotes": "int", "downvotes": "int", "pixiv_id": "int",
    "tagcount": "int", "gentags": "int", "arttags": "int", "copytags": "int", "chartags": "int",
    "metatags": "int",
}
# metatags whose value is a word or a list of words (see _parse_filter)
LIST_METATAGS = ("rating", "filetype", "md5", "status", "is", "has", "parent", "child", "source")
# metatags that shape the result rather than filter it (one each, never under `-`, `~`, `or`)
SHAPE_METATAGS = ("order", "random", "limit", "seed")
METATAG_ALIASES = {"fav_count": "favcount", "created_at": "date", "pixiv": "pixiv_id"}
# order:NAME → (sort key name, descending). Danbooru's defaults: numbers sort high first.
ORDER_KEYS: dict[str, tuple[str, bool]] = {
    "id": ("id", False), "id_asc": ("id", False), "id_desc": ("id", True),
    "date": ("date", True), "date_desc": ("date", True), "date_asc": ("date", False),
    "created_at": ("date", True), "created_at_desc": ("date", True),
    "created_at_asc": ("date", False),
    "change": ("change", True), "change_desc": ("change", True), "change_asc": ("change", False),
    "md5": ("md5", True), "md5_desc": ("md5", True), "md5_asc": ("md5", False),
    "landscape": ("ratio", True), "portrait": ("ratio", False), "random": ("random", False),
}
for _key in ("score", "favcount", "mpixels", "filesize", "upvotes", "downvotes", "tagcount",
             "gentags", "arttags", "copytags", "chartags", "metatags"):
    ORDER_KEYS.update({_key: (_key, True), f"{_key}_desc": (_key, True), f"{_key}_asc": (_key, False)})
del _key
FILETYPE_ALIASES = {"jpeg": "jpg"}
# Danbooru's MediaAsset::FILE_TYPES: the `is:png` shorthands
FILE_TYPES = ("jpg", "png", "gif", "webp", "avif", "mp4", "webm", "swf", "zip")
# Danbooru's rating words and aliases for `is:`
RATING_WORDS = {"general": "g", "sensitive": "s", "questionable": "q", "explicit": "e",
                "safe": "s", "sfw": "g,s", "nsfw": "q,e"}
# Post states kdata can read from Danbooru2023's columns, as predicate keys of query_plan.
STATUS_KEYS = {"deleted": "deleted", "banned": "banned", "active": "active", "any": "all",
               "all": "all"}
# Danbooru states the Danbooru2023 columns do not record.
UNKNOWN_STATES = ("pending", "flagged", "appealed", "modqueue", "unmoderated")
# is:/status: values that show deleted posts (Danbooru's PostSets::Post#has_status_metatag?).
SHOW_DELETED = ("all", "any", "active", "unmoderated", "modqueue", "deleted", "appealed")
# Danbooru's PostQuery::Parser never ends these tags early at a ')' (Tag::PERMITTED_UNBALANCED_TAGS).
UNBALANCED_TAGS = (":)", ":(", ";)", ";(", ">:)", ">:(")
ALL_METATAGS = (*RANGE_METATAGS, *LIST_METATAGS, *SHAPE_METATAGS)
RANGE_FORMS = ("N, >N, >=N, <N, <=N, A..B, A...B (B excluded), ..B, A.. or a comma list of "
               "these")

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
    text: str  # the value as written, lower-cased (order:score twice is one order)


@dataclass(frozen=True)
class _ShapeTerm:
    """limit:N, random:N or seed:S: a whole-query setting, matches every post where it stands."""

    name: str
    value: int


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
        if meta is not None:
            quoted = self._quoted(token)
            if quoted is not None:
                return quoted
            token, end = self._escaped_spaces(token, end)
        # Give back the ')' that close open groups; a tag keeps those that balance its own '('
        # and the emoticons Danbooru never splits (`(:))` is the tag `:)`).
        closers = 0
        while closers < self.depth and token.endswith(")") and (
                meta or not (_balanced(token) or token.lower() in UNBALANCED_TAGS)):
            token = token[:-1]
            closers += 1
        self.pos = end - closers
        if not token:
            raise QueryError("expected a tag or metatag before ')'")
        return _leaf(token, meta)

    def _quoted(self, token: str):
        """`name:"a b"` or `name:'a b'` (backslash escapes the quote): the metatag, else None."""
        colon = token.index(":") + 1
        quote = token[colon:colon + 1]
        if quote not in ("\"", "'"):
            return None
        start = self.pos + colon + 1
        at = start
        while at < len(self.text) and self.text[at] != quote:
            at += 2 if self.text[at] == "\\" else 1
        if at >= len(self.text):
            raise QueryError(f"{token[:colon]} value has no closing {quote}: close the quote")
        value = self.text[start:at].replace("\\" + quote, quote)
        self.pos = at + 1
        return _leaf(token[:colon] + value, _metatag_of(token), quoted=True)

    def _escaped_spaces(self, token: str, end: int) -> tuple[str, int]:
        """`source:foo\\ bar`: a backslash before a space keeps the space in the value."""
        while token.endswith("\\") and end < len(self.text) and self.text[end].isspace():
            nxt = end + 1
            while nxt < len(self.text) and not self.text[nxt].isspace():
                nxt += 1
            token = token[:-1] + self.text[end] + self.text[end + 1:nxt]
            end = nxt
        return token, end


def _balanced(token: str) -> bool:
    depth = 0
    for ch in token:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def _leaf(token: str, meta: str | None, quoted: bool = False):
    if meta is None:
        name = token.lower()
        return Wildcard(name) if "*" in name else TagTerm(name)
    value = token.split(":", 1)[1]
    if meta == "order":
        return _OrderTerm(_parse_order(token), value.lower())
    if meta in SHAPE_METATAGS:
        return _ShapeTerm(meta, _shape_value(meta, value))
    return _parse_filter(meta, value, negated=False, quoted=quoted)


def _shape_value(name: str, value: str) -> int:
    if not re.fullmatch(r"\+?\d+", value) or (name != "seed" and int(value) == 0):
        what = "a whole number" if name == "seed" else "a whole number from 1"
        raise QueryError(f"{name}:{value}: expected {what}, e.g. {name}:100")
    return int(value)


def parse_query(text: str) -> ParsedQuery:
    """Parse a query string; raises QueryError with what is accepted on malformed input."""
    raw = _Parser(text).parse()
    shapes: list = []
    tree = _simplify(_rewrite(raw, shapes))
    settings: dict[str, object] = {}
    for term in shapes:
        name, value, shown = (("order", term.order, term.text) if isinstance(term, _OrderTerm)
                              else (term.name, term.value, str(term.value)))
        if name in settings and settings[name][1] != shown:
            raise QueryError(f"{name}:{settings[name][1]} and {name}:{shown} can't be used "
                             f"together; give one {name}:")
        settings[name] = (value, shown)
    get = {name: value for name, (value, _) in settings.items()}
    return ParsedQuery(tree=tree, order=get.get("order"), limit=get.get("limit"),
                       sample=get.get("random"), seed=get.get("seed", 0),
                       show_deleted=_shows_deleted(tree))


def _shows_deleted(tree: Node) -> bool:
    return any(isinstance(n, MetaFilter) and n.name == "is" and n.shows_deleted
               for n in walk(tree))


def _rewrite(node, shapes: list, under: str = ""):
    """`~` items → one Or per parent; order:, limit:, random: and seed: terms taken out
    wherever they stand in a conjunction (as on Danbooru, they match every post), never under
    `-`, `~` or `or` (an error there, as on Danbooru)."""
    if isinstance(node, (_OrderTerm, _ShapeTerm)):
        name = "order" if isinstance(node, _OrderTerm) else node.name
        if under:
            raise QueryError(f"{name}: can't be used {under}; put it at the top level of the query")
        shapes.append(node)
        return ALL
    if isinstance(node, _Opt):  # a ~ item whose parent is not a conjunction (cannot parse)
        return _rewrite(node.child, shapes, under)
    if isinstance(node, Not):
        return Not(_rewrite(node.child, shapes, under or "under '-'"))
    if isinstance(node, (And, Or)):
        inner = under or ("with 'or'" if isinstance(node, Or) else "")
        opts = [c.child for c in node.children if isinstance(c, _Opt)]
        rest = [c for c in node.children if not isinstance(c, _Opt)]
        children = [_rewrite(c, shapes, inner) for c in rest]
        if opts:
            children.append(Or(tuple(_rewrite(o, shapes, under or "in a ~ group") for o in opts)))
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
    if key in RANGE_METATAGS or key in LIST_METATAGS or key in SHAPE_METATAGS:
        return key
    if key in METATAG_ALIASES:
        return METATAG_ALIASES[key]
    if key in NO_DATA_METATAGS:
        raise QueryError(f"{key}: is a Danbooru metatag whose data (users, pools, notes, "
                         "comments, votes) the Danbooru2023 metadata does not hold")
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


# Danbooru metatags over data Danbooru2023 lacks: named in the error instead of read as tags.
NO_DATA_METATAGS = frozenset((
    "user", "approver", "commenter", "comm", "noter", "noteupdater", "artcomm",
    "commentaryupdater", "flagger", "appealer", "upvote", "downvote", "upvoter", "downvoter",
    "fav", "ordfav", "favgroup", "ordfavgroup", "reacted", "pool", "ordpool", "note", "comment",
    "commentary", "disapproved", "search", "embedded", "pixelhash", "exif", "duration", "ai",
    "unaliased", "comment_count", "note_count", "flag_count", "child_count", "pool_count",
    "comments", "notes", "flags", "children", "pools",
))


def _parse_order(body: str) -> Order:
    value = body.split(":", 1)[1].lower()
    if value not in ORDER_KEYS:
        close = difflib.get_close_matches(value, ORDER_KEYS, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join('order:' + c for c in close)}?)" if close else ""
        raise QueryError(f"unknown order {value!r}{hint}; accepted: order:"
                         + ", order:".join(ORDER_KEYS))
    name, descending = ORDER_KEYS[value]
    return Order(name, descending)


def _parse_filter(name: str, value: str, negated: bool, quoted: bool = False) -> MetaFilter:
    if name == "source":
        return _source(value, negated, quoted)
    if not value:
        raise QueryError(f"{name}: needs a value")
    if name in _WORD_FILTERS:
        return _WORD_FILTERS[name](value.lower(), negated)
    if name == "rating":
        return MetaFilter(name, negated, values=tuple(_ratings(value)))
    if name == "filetype":
        exts = [FILETYPE_ALIASES.get(v, v) for v in re.split(r"[, ]+", value.lower())]
        if not all(re.fullmatch(r"[a-z0-9]+", e) for e in exts):
            raise QueryError(f"filetype:{value}: expected a comma list of extensions like png,jpg")
        return MetaFilter(name, negated, values=tuple(dict.fromkeys(exts)))
    if name == "md5":
        md5s = value.lower().split(",")
        if not all(re.fullmatch(r"[0-9a-f]{32}", m) for m in md5s):
            raise QueryError(f"md5:{value}: expected 32 hex digits (or a comma list of them)")
        return MetaFilter(name, negated, values=tuple(dict.fromkeys(md5s)))
    if name == "pixiv_id" and value.lower() in ("any", "none"):
        key = "pixiv" if value.lower() == "any" else "no_pixiv"
        return MetaFilter("is", negated, values=(key,))
    kind = RANGE_METATAGS[name]
    label = f"{name}:{value}"
    ranges = [_parse_range(part, kind, label) for part in _range_parts(value)]
    if kind == "year":  # a year range is a date range over whole years
        ranges = [_year_to_dates(r) for r in ranges]
        name = "date"
    elif kind == "date":
        ranges = [_date_to_bounds(r) for r in ranges]
    elif kind == "age":  # an age range is a range of creation times, reversed
        ranges = [_age_to_dates(r) for r in ranges]
        name = "date"
    return MetaFilter(name, negated, ranges=tuple(dict.fromkeys(ranges)))


def _range_parts(value: str) -> list[str]:
    """Danbooru's RangeParser splits a list at commas and spaces."""
    return re.split(r"[, ]+", value)


def _source(value: str, negated: bool, quoted: bool) -> MetaFilter:
    """source:TEXT is a case-insensitive prefix match, `*` any run of characters; source:none
    (unquoted) or an empty value matches posts without a source (Danbooru's source_matches)."""
    if not value or (value.lower() == "none" and not quoted):
        return MetaFilter("is", negated, values=("no_source",))
    return MetaFilter("source", negated, values=(value.lower(),))


def _status_key(metatag: str, value: str) -> str:
    if value in STATUS_KEYS:
        return STATUS_KEYS[value]
    if value in UNKNOWN_STATES:
        raise QueryError(f"{metatag}:{value}: the Danbooru2023 metadata records no {value} "
                         "state; kdata knows deleted, banned, active and any")
    return ""


def _status(value: str, negated: bool) -> MetaFilter:
    key = _status_key("status", value)
    if not key:
        raise QueryError(f"status:{value}: expected one of {', '.join(STATUS_KEYS)}"
                         + _did_you_mean(value, [*STATUS_KEYS, *UNKNOWN_STATES]))
    return MetaFilter("is", negated, values=(key,))


def _is(value: str, negated: bool) -> MetaFilter:
    key = _status_key("is", value)
    if key:
        return MetaFilter("is", negated, values=(key,))
    if value in ("parent", "child"):
        return MetaFilter("is", negated, values=(value,))
    if value in RATING_WORDS:
        return MetaFilter("rating", negated, values=tuple(_ratings(RATING_WORDS[value])))
    if value in FILE_TYPES or value in FILETYPE_ALIASES:
        return MetaFilter("filetype", negated, values=(FILETYPE_ALIASES.get(value, value),))
    words = [*STATUS_KEYS, "parent", "child", *RATING_WORDS, *FILE_TYPES]
    raise QueryError(f"is:{value}: expected one of {', '.join(words)}" + _did_you_mean(value, words))


_HAS = {"parent": "child", "child": "parent", "children": "parent", "source": "has_source"}
_HAS_NO_DATA = ("appeals", "flags", "replacements", "comments", "commentary", "notes", "pools")


def _has(value: str, negated: bool) -> MetaFilter:
    if value in _HAS:
        return MetaFilter("is", negated, values=(_HAS[value],))
    if value in _HAS_NO_DATA:
        raise QueryError(f"has:{value}: the Danbooru2023 metadata does not hold {value}")
    raise QueryError(f"has:{value}: expected one of parent, child, children, source"
                     + _did_you_mean(value, list(_HAS)))


def _parent(value: str, negated: bool) -> MetaFilter:
    """parent:N is post N and its children; none/any; a state names the parent's state."""
    if re.fullmatch(r"\d+", value):
        return MetaFilter("parent", negated, ranges=(Range(int(value), int(value)),))
    keys = {"none": "no_parent", "any": "child", "deleted": "parent_deleted",
            "banned": "parent_banned", "active": "parent_active"}
    return _relation("parent", value, negated, keys)


def _child(value: str, negated: bool) -> MetaFilter:
    keys = {"none": "no_children", "any": "parent", "deleted": "child_deleted",
            "banned": "child_banned", "active": "child_active"}
    return _relation("child", value, negated, keys)


def _relation(name: str, value: str, negated: bool, keys: dict[str, str]) -> MetaFilter:
    if value in keys:
        return MetaFilter("is", negated, values=(keys[value],))
    _status_key(name, value)  # a state Danbooru2023 lacks: say so
    ids = " (a post id)" if name == "parent" else ""
    raise QueryError(f"{name}:{value}: expected one of {', '.join(keys)}{ids}"
                     + _did_you_mean(value, list(keys)))


_WORD_FILTERS = {"status": _status, "is": _is, "has": _has, "parent": _parent, "child": _child}


def _did_you_mean(value: str, words: list[str]) -> str:
    close = difflib.get_close_matches(value, words, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _ratings(value: str) -> list[int]:
    try:
        return sorted({int(Rating.from_letter(v)) for v in re.split(r"[, ]+", value)})
    except ValueError:
        raise QueryError(
            f"rating:{value}: expected a comma list of g, s, q, e "
            "(or general, sensitive, questionable, explicit)"
        ) from None


_OPS = ((">=", True, True), ("<=", True, True), (">", False, True), ("<", True, False))


def _parse_range(value: str, kind: str, label: str) -> Range:
    """One item of a range list, as Danbooru's RangeParser reads it: `A..B` and `A...B` in
    either order (B excluded by `...`), `>A` `>=A` `<B` `<=B` `..B` `A..`, or one value."""
    try:
        exclusive = re.fullmatch(r"(.+?)\.\.\.(.+)", value)
        between = exclusive or re.fullmatch(r"(.+?)\.\.(.+)", value)
        if between:
            lo, hi = sorted((_scalar(kind, between.group(1)), _scalar(kind, between.group(2))))
            return Range(lo=lo, hi=hi, hi_inclusive=not exclusive)
        for op, lo_inc, hi_inc in _OPS:
            if value.startswith(op):
                v = _scalar(kind, value[len(op):])
                return Range(lo=v, lo_inclusive=lo_inc) if op[0] == ">" else Range(
                    hi=v, hi_inclusive=hi_inc)
        if value.startswith(".."):
            return Range(hi=_scalar(kind, value[2:]))
        if value.endswith("..") and len(value) > 2:
            return Range(lo=_scalar(kind, value[:-2]))
        v = _scalar(kind, value)
        if kind == "float" or (kind == "filesize" and re.search(r"[km]b?$", value.lower())):
            # Danbooru allows 5% either way for one mpixels: value or a filesize in KB/MB
            lo, hi = sorted((v * 0.95, v * 1.05))
            return Range(lo=lo, hi=hi)
        return Range(lo=v, hi=v)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise QueryError(
            f"{label}: malformed value; accepted forms: {RANGE_FORMS} where N is {_KIND_HELP[kind]}"
        ) from None


_KIND_HELP = {
    "int": "an integer", "float": "a number (e.g. 1.5, .5, +2, 15e-1)",
    "ratio": "a number, W:H or W/H (e.g. 16:9)",
    "date": "a date YYYY-MM-DD (also YYYY/MM/DD, YYYY.MM.DD, D-M-YYYY, D/M/YYYY, D.M.YYYY)",
    "year": "a year like 2021", "age": "an age like 30s, 5mi, 2h, 3d, 1w, 6mo, 1y or 1d12h",
    "filesize": "a size in bytes, or with kb / mb (e.g. 500kb, 1.5mb)",
}
_NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"


def _scalar(kind: str, text: str) -> float | int | str:
    if kind in ("int", "year"):
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(text)
        return int(text)
    if kind == "float":
        return _finite(text)
    if kind == "ratio":
        return _ratio(text)
    if kind == "filesize":
        return _filesize(text)
    if kind == "age":
        return _seconds(text)
    return _date(text).isoformat()


def _finite(text: str) -> float:
    if not re.fullmatch(_NUMBER, text):
        raise ValueError(text)
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _ratio(text: str) -> float:
    """`1.49`, `149:100` or `149/100` (Ruby's Rational: no sign on the denominator)."""
    parts = re.split(r"[:/]", text)
    if len(parts) == 1:
        return round(_finite(text), 2)
    if len(parts) != 2 or parts[1][:1] in "+-":
        raise ValueError(text)
    w, h = _finite(parts[0]), _finite(parts[1])
    if h == 0:
        raise ValueError(text)
    return round(w / h, 2)


def _filesize(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\d*\.\d+)([km]?)b?", text.lower())
    if not m:
        raise ValueError(text)
    return int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)])


_DATE_FORMS = (
    (re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})"), (1, 3, 4)),  # 2017-05-15 2017/5/15 2017.05.15
    (re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4})"), (4, 3, 1)),  # 15-5-2017 15/5/2017 15.5.2017
)


def _date(text: str) -> date:
    for pattern, (y, m, d) in _DATE_FORMS:
        match = pattern.fullmatch(text)
        if match:
            return date(int(match.group(y)), int(match.group(m)), int(match.group(d)))
    raise ValueError(text)


# Danbooru's DurationParser: a unit is any unambiguous prefix of its name, `m` is minutes;
# months and years are 365.25 / 12 and 365.25 days.
_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800,
          "months": 365.25 * 86400 / 12, "years": 365.25 * 86400}
_UNIT_ORDER = list(_UNITS)


def _unit(word: str) -> str:
    if word in ("m", "min"):
        return "minutes"
    if word in ("hr",):
        return "hours"
    if word in ("wk",):
        return "weeks"
    if word in ("yr",):
        return "years"
    found = [u for u in _UNITS if u.startswith(word)]
    if len(found) != 1:
        raise ValueError(word)
    return found[0]


def _seconds(text: str) -> float:
    """`1d12h`, `30s`, `90` (seconds): units largest first, as Danbooru requires."""
    total, last = 0.0, len(_UNIT_ORDER)
    parts = re.findall(r"(\d*\.?\d+)\s*([a-z]*)", text.lower())
    if not parts or "".join(n + u for n, u in parts) != text.lower().replace(" ", ""):
        raise ValueError(text)
    for number, word in parts:
        unit = _unit(word) if word else "seconds"
        rank = _UNIT_ORDER.index(unit)
        if rank >= last:
            raise ValueError(text)
        last = rank
        total += float(number) * _UNITS[unit]
    return total


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


def _age_to_dates(rng: Range) -> Range:
    """Ages in seconds → bounds on `created_at`: older is earlier, so the bounds swap. The
    times are Danbooru's server clock (US Eastern) as `created_at` writes them; one exact
    age is the whole day of that moment, as on Danbooru."""
    if rng.lo is not None and rng.lo == rng.hi:
        day = _moment(rng.lo)[:10]
        return Range(lo=day, hi=_next_day(day), lo_inclusive=True, hi_inclusive=False)
    lo = None if rng.hi is None else _moment(rng.hi)
    hi = None if rng.lo is None else _moment(rng.lo)
    return Range(lo=lo, hi=hi, lo_inclusive=rng.hi_inclusive, hi_inclusive=rng.lo_inclusive)


def _moment(seconds_ago: float) -> str:
    """Now minus `seconds_ago`, written like `created_at` without its offset (local time of
    US Eastern, Danbooru's server zone; fixed UTC-5 where no time zone data is installed)."""
    try:
        from zoneinfo import ZoneInfo
        zone = ZoneInfo("America/New_York")
    except Exception:  # no tz database on this machine
        zone = timezone(timedelta(hours=-5))
    when = datetime.now(zone) - timedelta(seconds=min(seconds_ago, 9000 * 365.25 * 86400))
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23]
