"""Parse Danbooru-style tag queries into a `ParsedQuery` (pure: no database).

Syntax (Danbooru's):

    1girl solo          every tag (AND)          -comic              not this tag
    ~cat_ears ~dog_ears at least one of the ~tags (all ~tags form one OR group, as on Danbooru)
    rating:g,s          general/sensitive/questionable/explicit (letters or words, comma list)
    score:>10  favcount:10..100  id:..5000000  width:>=1024  height:<2000  mpixels:>=1  ratio:0.5..2
    date:2020-01-01..2023-12-31  year:2021  filetype:png,jpg  order:score
    -rating:e  -score:<0  ...  any filter metatag can be negated

Ranges: `N`, `>N`, `>=N`, `<N`, `<=N`, `a..b` (inclusive), `..b` (<= b), `a..` (>= a).
`ratio` is width/height rounded to 2 decimals like Danbooru, and takes `16:9` as well as `1.78`.

Dates: `post.created_at` holds ISO strings with Danbooru's server offset (US Eastern, e.g.
`2023-03-17T03:50:48.762-04:00`). `date:`/`year:` compare the *date as written* (the local
calendar date of that offset), not the UTC date: that is what Danbooru shows on the post page,
it needs no time-zone arithmetic, and it compares as a plain string range on the column.
`order:date` likewise sorts the strings as written (local time; posts an hour apart around a
DST change may swap places, which only matters within that hour).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date

from kohaku_data.db.enums import Rating
from kohaku_data.errors import KdataError


class QueryError(KdataError):
    """A tag query that cannot be run: bad syntax, unknown metatag or value, unknown tag."""


@dataclass(frozen=True)
class Range:
    """Closed/open bounds; `None` means unbounded. Exact values have lo == hi, both inclusive."""

    lo: float | str | None = None
    hi: float | str | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True


@dataclass(frozen=True)
class MetaFilter:
    """One filter metatag. `values` for list metatags (rating, filetype), `range` otherwise."""

    name: str  # canonical metatag name, a key of RANGE_METATAGS or LIST_METATAGS
    negated: bool = False
    range: Range | None = None
    values: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class Order:
    name: str  # key of ORDER_KEYS
    descending: bool


@dataclass(frozen=True)
class ParsedQuery:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()  # the ~ group: a post needs at least one of these
    filters: tuple[MetaFilter, ...] = ()
    order: Order | None = None

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.include + self.exclude + self.any_of))

    @property
    def has_tags(self) -> bool:
        return bool(self.include or self.exclude or self.any_of)


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
RANGE_FORMS = "N, >N, >=N, <N, <=N, A..B, ..B or A.."

_RANGE_SHAPED = re.compile(r"^(>=|<=|>|<|\.\.)|\.\.")


def parse_query(text: str) -> ParsedQuery:
    """Parse a query string; raises QueryError with what is accepted on malformed input."""
    include: list[str] = []
    exclude: list[str] = []
    any_of: list[str] = []
    filters: list[MetaFilter] = []
    orders: list[Order] = []
    for token in text.split():
        negated, either, body = _prefixes(token)
        meta = _metatag_of(body)
        if meta is None:
            (exclude if negated else any_of if either else include).append(body.lower())
        elif either:
            raise QueryError(f"{token!r}: metatags cannot be in a ~ group; only tags can")
        elif meta == "order":
            if negated:
                raise QueryError(f"{token!r}: order: cannot be negated")
            orders.append(_parse_order(body))
        else:
            filters.append(_parse_filter(meta, body.split(":", 1)[1], negated))
    if len(orders) > 1:
        raise QueryError("more than one order: metatag; give at most one")
    return ParsedQuery(
        include=tuple(dict.fromkeys(include)),
        exclude=tuple(dict.fromkeys(exclude)),
        any_of=tuple(dict.fromkeys(any_of)),
        filters=tuple(filters),
        order=orders[0] if orders else None,
    )


def _prefixes(token: str) -> tuple[bool, bool, str]:
    negated = token.startswith("-")
    either = token.startswith("~")
    body = token[1:] if negated or either else token
    if not body or body.startswith(("-", "~")):
        raise QueryError(f"{token!r}: expected a tag or metatag after '-' or '~'")
    return negated, either, body


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
    rng = _parse_range(value, lambda v: _scalar(name, kind, v), f"{name}:")
    if kind == "year":  # a year range is a date range over whole years
        rng = _year_to_dates(rng)
        name = "date"
    elif kind == "date":
        rng = _date_to_bounds(rng)
    return MetaFilter(name, negated, range=rng)


def _ratings(value: str) -> list[int]:
    try:
        return sorted({int(Rating.from_letter(v)) for v in value.split(",")})
    except ValueError:
        raise QueryError(
            f"rating:{value}: expected a comma list of g, s, q, e "
            "(or general, sensitive, questionable, explicit)"
        ) from None


def _parse_range(value: str, scalar, label: str) -> Range:
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
            f"{label}{value}: malformed value; accepted forms: {RANGE_FORMS}"
            f" where N is {_KIND_HELP[_kind_of(label)]}"
        ) from None


_KIND_HELP = {
    "int": "an integer", "float": "a number", "ratio": "a number or W:H (e.g. 16:9)",
    "date": "a date YYYY-MM-DD", "year": "a year like 2021",
}


def _kind_of(label: str) -> str:
    return RANGE_METATAGS[label.rstrip(":")]


def _scalar(name: str, kind: str, text: str) -> float | int | str:
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

