"""Tag queries against brute-force Python filters over the same rows, in real sqlite files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from kohaku_data.cli import app
from kohaku_data.db import DanbooruDB
from kohaku_data.db import query as query_mod
from kohaku_data.db.migrate import migrate as run_migrations
from kohaku_data.db.query import QueryError, count_posts, parse_query, query_ids, select_posts

# Tag vocabulary: (name, share of posts). Includes names that would break unparameterised SQL.
TAGS = [
    ("1girl", 0.6), ("solo", 0.5), ("long_hair", 0.4), ("highres", 0.45), ("comic", 0.08),
    ("cat_ears", 0.1), ("dog_ears", 0.07), ("1boy", 0.2), ("hatsune_miku", 0.05),
    ("re:zero_kara_hajimeru_isekai_seikatsu", 0.04), (":d", 0.15), ("rare_tag", 0.01),
    ("it's_a_trap');drop_table_post;--", 0.05), ('quote"tag;', 0.05), ("unused_tag", 0.0),
]
WIDTHS = [500, 800, 1000, 1024, 1200, 1920, 3000]
HEIGHTS = [500, 600, 768, 1000, 1080, 1440]
EXTS = ["jpg", "png", "gif", "webp"]
COLUMNS = (
    "id, created_at, uploader_id, source, md5, parent_id, has_children, is_deleted, is_banned, "
    "pixiv_id, has_active_children, bit_flags, has_large, has_visible_children, image_width, "
    "image_height, file_size, file_ext, rating, score, up_score, down_score, fav_count, file_url, "
    "large_file_url, preview_file_url, updated_at"
)


@dataclass
class P:
    id: int
    created_at: str
    width: int
    height: int
    ext: str
    rating: int
    score: int
    fav: int
    size: int
    tags: set[str] = field(default_factory=set)


def make_posts(seed: int, n: int = 300) -> list[P]:
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(1, 20_000), n))
    posts = []
    for pid in ids:
        day = f"{rng.randint(2015, 2023)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00.000"
        created = f"{day}T{clock}{rng.choice(['-04:00', '-05:00'])}"
        post = P(
            pid, created, rng.choice(WIDTHS), rng.choice(HEIGHTS), rng.choice(EXTS),
            rng.randint(0, 3), rng.randint(-5, 40), rng.randint(0, 80), rng.randint(1, 9) * 1000,
        )
        post.tags = {name for name, share in TAGS if rng.random() < share}
        posts.append(post)
    return posts


def write_db(path: Path, posts: list[P], migrated: bool, vocab: list[tuple[str, float]] = TAGS) -> DanbooruDB:
    """A DB in the published schema holding `posts`, with one tag row per `vocab` name (in order)."""
    db = DanbooruDB.create(path)
    conn = db.connection()
    with db.database.atomic():
        conn.executemany(
            f"INSERT INTO post ({COLUMNS}) VALUES ({','.join('?' * 27)})",
            [(p.id, p.created_at, 1, "", f"{p.id:032x}", None, 0, 0, 0, None, 0, 0, 0, 0,
              p.width, p.height, p.size, p.ext, p.rating, p.score, p.score, 0, p.fav, None, None,
              None, p.created_at) for p in posts],
        )
        for tag_id, (name, _) in enumerate(vocab, start=1):
            members = [p.id for p in posts if name in p.tags]
            conn.execute("INSERT INTO tag VALUES (?, ?, 0, ?)", (tag_id, name, len(members)))
            conn.executemany(
                "INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)",
                [(pid, tag_id) for pid in members],
            )
    if migrated:
        run_migrations(db)
    return db


@pytest.fixture(params=[(0, True), (1, True), (2, False)], ids=["seed0", "seed1", "seed2-unmigrated"])
def sample(request, tmp_path: Path):
    seed, migrated = request.param
    posts = make_posts(seed)
    db = write_db(tmp_path / "q.db", posts, migrated)
    yield db, posts, random.Random(seed)
    db.close()


# -- random terms: (query text, predicate) ----------------------------------------------------
Term = tuple[str, Callable[[P], bool]]
_OPS = {
    "": lambda v, a, b: v == a, ">": lambda v, a, b: v > a, ">=": lambda v, a, b: v >= a,
    "<": lambda v, a, b: v < a, "<=": lambda v, a, b: v <= a,
}


def range_term(rng: random.Random, name: str, get, values: list, show=str) -> Term:
    a, b = sorted(rng.sample(values, 2))
    form = rng.choice(["", ">", ">=", "<", "<=", "a..b", "..b", "a.."])
    if form == "a..b":
        return f"{name}:{show(a)}..{show(b)}", lambda p: a <= get(p) <= b
    if form == "..b":
        return f"{name}:..{show(b)}", lambda p: get(p) <= b
    if form == "a..":
        return f"{name}:{show(a)}..", lambda p: get(p) >= a
    return f"{name}:{form}{show(a)}", lambda p: _OPS[form](get(p), a, None)


def sqlite_round2(x: float) -> float:
    return round(x, 2)  # no ratio here lies on a .xx5 tie (test_no_ratio_ties)


def random_term(rng: random.Random, posts: list[P]) -> Term:
    names = [n for n, _ in TAGS]
    kind = rng.choice(["tag", "tag", "-tag", "rating", "score", "favcount", "id", "width",
                       "height", "mpixels", "ratio", "date", "year", "filetype"])
    if kind == "tag":
        name = rng.choice(names)
        return name, lambda p: name in p.tags
    if kind == "-tag":
        name = rng.choice(names)
        return f"-{name}", lambda p: name not in p.tags
    if kind == "rating":
        chosen = rng.sample(range(4), rng.randint(1, 3))
        words = [rng.choice(["gsqe"[r], ["general", "sensitive", "questionable", "explicit"][r]])
                 for r in chosen]
        negated = rng.random() < 0.3
        text = ("-" if negated else "") + "rating:" + ",".join(words)
        return text, lambda p: (p.rating in chosen) != negated
    if kind == "filetype":
        chosen = rng.sample(EXTS, 2)
        return "filetype:" + ",".join(chosen), lambda p: p.ext in chosen
    if kind == "date":
        days = sorted({p.created_at[:10] for p in posts})
        return range_term(rng, "date", lambda p: p.created_at[:10], days)
    if kind == "year":
        return range_term(rng, "year", lambda p: int(p.created_at[:4]), list(range(2014, 2025)))
    if kind == "mpixels":
        values = sorted({p.width * p.height / 1e6 for p in posts})
        return range_term(rng, "mpixels", lambda p: p.width * p.height / 1e6, values, show=repr)
    if kind == "ratio":
        def ratio(p: P) -> float:
            return sqlite_round2(p.width / p.height)
        values = sorted({ratio(p) for p in posts})
        return range_term(rng, "ratio", ratio, values)
    get = {"score": lambda p: p.score, "favcount": lambda p: p.fav, "id": lambda p: p.id,
           "width": lambda p: p.width, "height": lambda p: p.height}[kind]
    values = sorted({get(p) for p in posts} | {-100, 10**7})
    term = range_term(rng, kind, get, values)
    if rng.random() < 0.2:
        return "-" + term[0], lambda p, f=term[1]: not f(p)
    return term


def random_query(rng: random.Random, posts: list[P]) -> tuple[str, Callable[[P], bool]]:
    terms = [random_term(rng, posts) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.4:
        group = rng.sample([n for n, _ in TAGS], rng.randint(2, 3))
        terms.append((" ".join("~" + g for g in group), lambda p: bool(p.tags & set(group))))
    rng.shuffle(terms)
    return " ".join(t for t, _ in terms), lambda p: all(f(p) for _, f in terms)


def test_no_ratio_ties() -> None:
    for w in WIDTHS:
        for h in HEIGHTS:
            frac = (w / h * 100) % 1
            assert abs(frac - 0.5) > 1e-6, (w, h)


@pytest.mark.parametrize("engine", ["arrays", "arrays-scan", "sql"])
def test_random_queries_match_brute_force(sample, engine, monkeypatch) -> None:
    db, posts, rng = sample
    if engine == "arrays-scan":  # force full metatag scans and whole-tag reads (big-DB plan)
        monkeypatch.setattr(query_mod, "_PROBE_MAX", 0)
        monkeypatch.setattr(query_mod, "_PROBE_RATIO", 10**9)
    elif engine == "arrays":  # force probing wherever possible (small-candidate plan)
        monkeypatch.setattr(query_mod, "_PROBE_RATIO", 0)
    for _ in range(60):
        text, predicate = random_query(rng, posts)
        expected = [p.id for p in posts if predicate(p)]
        if engine == "sql":
            got = [p.id for p in select_posts(db, text)]
        else:
            got = query_ids(db, text)
            assert count_posts(db, text) == len(expected), text
        assert got == expected, text


def test_plain_tags_and_negation(sample) -> None:
    db, posts, _ = sample
    expected = [p.id for p in posts if {"1girl", "solo"} <= p.tags and "comic" not in p.tags]
    assert expected  # the sample is big enough to make this meaningful
    assert query_ids(db, "1girl solo -comic") == expected
    assert query_ids(db, "-1girl") == [p.id for p in posts if "1girl" not in p.tags]
    assert query_ids(db, "") == [p.id for p in posts]
    assert query_ids(db, "unused_tag") == []
    assert query_ids(db, "rare_tag unused_tag 1girl") == []


def test_or_group(sample) -> None:
    db, posts, _ = sample
    expected = [p.id for p in posts if p.tags & {"cat_ears", "dog_ears"} and "1boy" not in p.tags]
    assert query_ids(db, "~cat_ears ~dog_ears -1boy") == expected
    assert count_posts(db, "~cat_ears ~dog_ears -1boy") == len(expected)


def test_tags_needing_no_escaping(sample) -> None:
    db, posts, _ = sample
    for name in ["it's_a_trap');drop_table_post;--", 'quote"tag;', ":d",
                 "re:zero_kara_hajimeru_isekai_seikatsu"]:
        expected = [p.id for p in posts if name in p.tags]
        assert expected
        assert query_ids(db, name) == expected
        assert [p.id for p in select_posts(db, name)] == expected
    assert db.Post.select().count() == len(posts)  # nothing was dropped


ORDERS = {
    "score": (lambda p: p.score, True), "score_asc": (lambda p: p.score, False),
    "favcount": (lambda p: p.fav, True), "favcount_asc": (lambda p: p.fav, False),
    "id": (lambda p: p.id, False), "id_desc": (lambda p: p.id, True),
    "date": (lambda p: p.created_at, True), "date_asc": (lambda p: p.created_at, False),
    "mpixels": (lambda p: p.width * p.height, True), "filesize": (lambda p: p.size, True),
    "landscape": (lambda p: sqlite_round2(p.width / p.height), True),
}


def expected_order(posts: list[P], order: str, predicate) -> list[int]:
    key, descending = ORDERS[order]
    rows = sorted((p for p in posts if predicate(p)), key=lambda p: (key(p), p.id))
    return [p.id for p in (reversed(rows) if descending else rows)]


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("tags", ["1girl -comic", "", "~cat_ears ~1boy"])
def test_order_limit_and_paging(sample, order, tags) -> None:
    db, posts, _ = sample
    want = {
        "1girl -comic": lambda p: "1girl" in p.tags and "comic" not in p.tags,
        "": lambda p: True,
        "~cat_ears ~1boy": lambda p: bool(p.tags & {"cat_ears", "1boy"}),
    }[tags]
    text = f"{tags} order:{order} score:>=0"
    expected = expected_order(posts, order, lambda p: want(p) and p.score >= 0)
    assert query_ids(db, text) == expected
    assert [p.id for p in select_posts(db, text)] == expected
    assert query_ids(db, text, limit=5) == expected[:5]
    pages, cursor = [], None
    while True:
        page = query_ids(db, text, limit=13, after_id=cursor)
        if not page:
            break
        pages += page
        cursor = page[-1]
    assert pages == expected


def test_after_id_without_order(sample) -> None:
    db, posts, _ = sample
    middle = posts[len(posts) // 2].id
    assert query_ids(db, "1girl", after_id=middle) == [
        p.id for p in posts if "1girl" in p.tags and p.id > middle]
    assert query_ids(db, "score:>5", after_id=middle, limit=3) == [
        p.id for p in posts if p.score > 5 and p.id > middle][:3]


def test_cursor_must_exist_for_keyed_order(sample) -> None:
    db, _, _ = sample
    with pytest.raises(QueryError, match="last id of the previous page"):
        query_ids(db, "1girl order:score", after_id=10**9)


def test_aliases_resolve_first(tmp_path: Path) -> None:
    posts = make_posts(5, n=80)
    db = write_db(tmp_path / "a.db", posts, migrated=True)
    db.connection().execute("INSERT INTO kdata_tag_alias VALUES ('1girls', '1girl')")
    expected = [p.id for p in posts if "1girl" in p.tags]
    assert query_ids(db, "1girls") == expected
    assert count_posts(db, "-1girls") == len(posts) - len(expected)
    with pytest.raises(QueryError, match="1girl"):
        query_ids(db, "1grils")  # close match found among tags and aliases
    db.close()


def test_unmigrated_file_has_no_alias_table(tmp_path: Path) -> None:
    db = write_db(tmp_path / "u.db", make_posts(6, n=30), migrated=False)
    assert not db.has_table("kdata_tag_alias")
    with pytest.raises(QueryError, match=r"unknown tag: '1girls' \(did you mean 1girl"):
        query_ids(db, "1girls")
    db.close()


def test_unknown_tags_named_with_close_matches(sample) -> None:
    db, _, _ = sample
    with pytest.raises(QueryError) as err:
        query_ids(db, "1gril sollo long_hair")
    message = str(err.value)
    assert "'1gril' (did you mean 1girl" in message
    assert "'sollo' (did you mean solo" in message
    assert "'long_hair'" not in message
    with pytest.raises(QueryError, match="metatags are"):
        count_posts(db, "foo:bar")


@pytest.mark.parametrize("text, fragment", [
    ("score:>x", "accepted forms"), ("score:1..2..3", "accepted forms"), ("score:..", "accepted"),
    ("favcount:1.5", "integer"), ("date:2020-13-01", "YYYY-MM-DD"), ("date:2020", "YYYY-MM-DD"),
    ("ratio:1:0", "W:H"), ("mpixels:abc", "number"), ("year:20x1", "year"),
    ("rating:x", "g, s, q, e"), ("rating:", "needs a value"), ("filetype:p;ng", "extensions"),
    ("order:bogus", "order:score"), ("-order:score", "can't be used under '-'"),
    ("order:id order:score", "can't be used together"), ("a or order:score", "with 'or'"), ("~order:score", "~ group"), ("-", "expected a tag"),
    ("scroe:>10", "did you mean score:"), ("ratingg:g", "accepted metatags"),
    ("widht:1000", "width:"), ("foo:>3", "accepted metatags"),
])
def test_malformed_queries(text: str, fragment: str) -> None:
    with pytest.raises(QueryError, match="(?s).*" + fragment.replace("(", r"\(")):
        parse_query(text)


def test_parse_is_pure_and_keeps_colon_tags() -> None:
    parsed = parse_query("1girl -Comic ~a ~b :d re:zero rating:g,s order:score_asc year:2021")
    assert parsed.include == ("1girl", ":d", "re:zero")
    assert parsed.exclude == ("comic",)
    assert parsed.any_of == ("a", "b")
    assert [f.name for f in parsed.filters] == ["rating", "date"]
    assert parsed.filters[0].values == (0, 1)
    assert parsed.order is not None and parsed.order.name == "score" and not parsed.order.descending


def test_limit_zero_and_negative(sample) -> None:
    db, _, _ = sample
    assert query_ids(db, "1girl", limit=0) == []
    with pytest.raises(QueryError):
        query_ids(db, "1girl", limit=-1)


def test_cli(sample, tmp_path: Path) -> None:
    db, posts, _ = sample
    path = str(db.path)
    runner = CliRunner()
    expected = [p.id for p in posts if "1girl" in p.tags and p.score > 10]
    result = runner.invoke(app, ["query", "1girl score:>10", "--db", path])
    assert result.exit_code == 0, result.output
    assert [int(x) for x in result.stdout.split()] == expected
    result = runner.invoke(app, ["query", "1girl score:>10", "--db", path, "--count"])
    assert result.stdout.strip() == str(len(expected))
    result = runner.invoke(app, ["query", "1girl score:>10", "--db", path, "--limit", "2",
                                 "--format", "jsonl"])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == expected[:2]
    by_id = {p.id: p for p in posts}
    for record in records:
        assert set(record["tags"]["general"]) == by_id[record["id"]].tags
        assert record["score"] == by_id[record["id"]].score
    result = runner.invoke(app, ["query", "1gril", "--db", path])
    assert result.exit_code == 1 and "did you mean 1girl" in result.output


@pytest.mark.parametrize("first_window", [1, 7, 10**9])
def test_paged_queries_over_id_windows_match_brute_force(sample, monkeypatch, first_window) -> None:
    """`limit` without `order:` walks id windows; tiny windows force many of them."""
    db, posts, rng = sample
    monkeypatch.setattr(query_mod, "_MIN_WINDOW", 1)
    monkeypatch.setattr(query_mod, "_first_window", lambda plan, limit, span: first_window)
    for _ in range(25):
        text, predicate = random_query(rng, posts)
        expected = [p.id for p in posts if predicate(p)]
        limit = rng.choice([1, 3, 17, 1000])
        assert query_ids(db, text, limit=limit) == expected[:limit], text
        pages, cursor = [], None
        while page := query_ids(db, text, limit=limit, after_id=cursor):
            pages += page
            cursor = page[-1]
        assert pages == expected, text
