"""Danbooru's full search syntax (or/and, parentheses, ~ groups, wildcards, value lists, negated
metatags) against a plain Python reference over the same rows, in real sqlite files: random
small DBs with awkward tag names, and `kdata sample` DBs with the real tag vocabulary."""

from __future__ import annotations

import fnmatch
import itertools
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from kohaku_data.db import DanbooruDB
from kohaku_data.db import query as query_mod
from kohaku_data.db.migrate import migrate as run_migrations
from kohaku_data.db.query import QueryError, count_posts, query_ids, select_posts
from kohaku_data.db.query_bits import open_bits, refresh_if_stale
from kohaku_data.db.query_parse import (
    MAX_WILDCARD_TAGS, And, MetaFilter, Not, Or, TagTerm, Wildcard, parse_query,
)
from kohaku_data.sample.metadata import write_sample_db
from test_query import P, write_db

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
COLUMNS = ("id, created_at, uploader_id, source, md5, parent_id, has_children, is_deleted, "
           "is_banned, pixiv_id, has_active_children, bit_flags, has_large, has_visible_children, "
           "image_width, image_height, file_size, file_ext, rating, score, up_score, down_score, "
           "fav_count, file_url, large_file_url, preview_file_url, updated_at")
# Names a wildcard must treat literally ('?', '[', quotes), names with parentheses and colons.
VOCAB = [("1girl", 0.6), ("1boy", 0.25), ("solo", 0.5), ("long_hair", 0.4), ("short_hair", 0.2),
         ("cat_ears", 0.1), ("dog_ears", 0.08), ("comic", 0.08), ("hatsune_miku", 0.05),
         ("hatsune_miku_(append)", 0.03), ("re:zero", 0.04), ("what?", 0.05), ("[x]_tag", 0.05),
         ("it's_a_trap", 0.05), ('quote"tag', 0.04), ("rare_tag", 0.01), ("unused_tag", 0.0)]
PATTERNS = ["*_hair", "hatsune_miku*", "*ears", "1*", "*_tag", "what?*", "[x]*", "*(append)",
            "*a*", "nomatch*", "*'s*", "re:*", "*"]


@dataclass
class Row:
    id: int
    rating: int
    score: int
    fav: int
    width: int
    tags: set[str] = field(default_factory=set)


# -- databases ---------------------------------------------------------------------------------
def random_rows(seed: int, n: int = 250) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for pid in sorted(rng.sample(range(1, 5000), n)):
        row = Row(pid, rng.randint(0, 3), rng.randint(-5, 30), rng.randint(0, 50),
                  rng.choice([600, 1024, 2000]))
        row.tags = {name for name, share in VOCAB if rng.random() < share}
        rows.append(row)
    return rows


def write_rows(path: Path, rows: list[Row], migrated: bool) -> DanbooruDB:
    """The rows as posts of test_query's writer (fixed date, height, size and format)."""
    posts = [P(r.id, "2020-01-01T00:00:00.000-05:00", r.width, 768, "png", r.rating, r.score, r.fav, 1000, r.tags)
             for r in rows]
    return write_db(path, posts, migrated, vocab=VOCAB)


def read_rows(db: DanbooruDB) -> list[Row]:
    """The plain reference's view of any DB: every post a query shows without status: (the
    deleted ones are hidden, as on Danbooru) and its tag names, read row by row."""
    conn = db.connection()
    rows = {pid: Row(pid, rating, score, fav, width) for pid, rating, score, fav, width in
            conn.execute("SELECT id, rating, score, fav_count, image_width FROM post "
                         "WHERE is_deleted IS NOT 1 ORDER BY id")}
    for pid, name in conn.execute(
            "SELECT r.post_id, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"):
        if pid in rows:
            rows[pid].tags.add(name)
    return list(rows.values())


def tag_popularity(db: DanbooruDB) -> dict[str, int]:
    return dict(db.connection().execute("SELECT name, popularity FROM tag"))


@pytest.fixture(params=["random0", "random1-unmigrated", "sample0", "sample1"])
def world(request, tmp_path: Path):
    """(db, rows, tag names to draw from, popularity, rng): two random DBs, two `kdata sample` DBs."""
    kind, _, rest = request.param.partition("-")
    seed = int(kind[-1])
    if kind.startswith("random"):
        db = write_rows(tmp_path / "r.db", random_rows(seed), migrated=rest != "unmigrated")
        names = [n for n, _ in VOCAB]
    else:
        path = tmp_path / "s.db"
        write_sample_db(path, posts=1500, seed=seed)
        db = DanbooruDB.open(path)
        run_migrations(db, MIGRATIONS)
        names = [r[0] for r in db.connection().execute(
            "SELECT name FROM tag WHERE popularity > 0 ORDER BY popularity DESC LIMIT 40")]
    yield db, read_rows(db), names, tag_popularity(db), random.Random(seed)
    db.close()


# -- the plain reference: random query text with its own predicate ---------------------------
Pred = Callable[[Row], bool]


def wildcard_tags(pattern: str, popularity: dict[str, int]) -> set[str]:
    """Danbooru's rule, written plainly: matching names with posts, most popular first
    (ties by name), the first MAX_WILDCARD_TAGS."""
    names = [n for n, p in popularity.items() if p > 0 and fnmatch.fnmatchcase(n, _fn(pattern))]
    return set(sorted(names, key=lambda n: (-popularity[n], n))[:MAX_WILDCARD_TAGS])


def _fn(pattern: str) -> str:
    return "".join("[" + c + "]" if c in "?[" else c for c in pattern)


def leaf(rng: random.Random, names: list[str], popularity: dict[str, int]) -> tuple[str, Pred]:
    kind = rng.choice(["tag", "tag", "tag", "wild", "rating", "score", "id", "favcount", "width"])
    if kind == "tag":
        name = rng.choice(names)
        return name, lambda r: name in r.tags
    if kind == "wild":
        pattern = rng.choice(PATTERNS + [rng.choice(names)[:3] + "*"])
        matched = wildcard_tags(pattern, popularity)
        return pattern, lambda r: bool(r.tags & matched)
    if kind == "rating":
        chosen = rng.sample(range(4), rng.randint(1, 3))
        return "rating:" + ",".join("gsqe"[c] for c in chosen), lambda r: r.rating in chosen
    if kind == "id":
        ids = rng.sample(range(1, 5000), rng.randint(1, 40))
        return "id:" + ",".join(map(str, ids)), lambda r: r.id in ids
    get = {"score": lambda r: r.score, "favcount": lambda r: r.fav, "width": lambda r: r.width}[kind]
    return value_list(rng, kind, get)


def value_list(rng: random.Random, name: str, get) -> tuple[str, Pred]:
    """`name:` with a comma list of values and ranges (`score:1,5,10`, `score:5..10,>20`)."""
    parts, tests = [], []
    for _ in range(rng.randint(1, 3)):
        a, b = sorted(rng.sample(range(-6, 2100 if name == "width" else 60), 2))
        form = rng.choice(["=", ">", ">=", "<", "<=", "..", "a..", "..b"])
        text, test = {
            "=": (f"{a}", lambda v, a=a: v == a), ">": (f">{a}", lambda v, a=a: v > a),
            ">=": (f">={a}", lambda v, a=a: v >= a), "<": (f"<{b}", lambda v, b=b: v < b),
            "<=": (f"<={b}", lambda v, b=b: v <= b),
            "..": (f"{a}..{b}", lambda v, a=a, b=b: a <= v <= b),
            "a..": (f"{a}..", lambda v, a=a: v >= a), "..b": (f"..{b}", lambda v, b=b: v <= b),
        }[form]
        parts.append(text)
        tests.append(test)
    if rng.random() < 0.3:  # the plain list form, like id:1,2,3
        values = rng.sample(range(-5, 40), 3)
        parts, tests = [",".join(map(str, values))], [lambda v, vs=values: v in vs]
    return f"{name}:{','.join(parts)}", lambda r: any(t(get(r)) for t in tests)


def factor(rng: random.Random, names, popularity, depth: int) -> tuple[str, Pred]:
    """A self-contained piece of query text (a leaf, `-x`, or a parenthesised group)."""
    roll = rng.random()
    if depth <= 0 or roll < 0.45:
        text, pred = leaf(rng, names, popularity)
    elif roll < 0.6:
        parts = [factor(rng, names, popularity, depth - 1) for _ in range(rng.randint(2, 3))]
        joiner = rng.choice([" ", " and ", " AND "])
        text = "(" + joiner.join(t for t, _ in parts) + ")"
        pred = lambda r, ps=parts: all(p(r) for _, p in ps)  # noqa: E731
    elif roll < 0.8:
        parts = [factor(rng, names, popularity, depth - 1) for _ in range(rng.randint(2, 3))]
        text = "(" + rng.choice([" or ", " OR "]).join(t for t, _ in parts) + ")"
        pred = lambda r, ps=parts: any(p(r) for _, p in ps)  # noqa: E731
    else:  # a group with a ~ set: (~a ~b c) is (a or b) and c
        opts = [factor(rng, names, popularity, depth - 1) for _ in range(rng.randint(2, 3))]
        musts = [factor(rng, names, popularity, depth - 1) for _ in range(rng.randint(0, 1))]
        # `~-a` is a syntax error on Danbooru too; `~(-a)` is the way to write it.
        pieces = ["~" + (f"({t})" if t.startswith("-") else t) for t, _ in opts] + [t for t, _ in musts]
        rng.shuffle(pieces)
        text = "(" + " ".join(pieces) + ")"
        pred = lambda r, o=opts, m=musts: any(p(r) for _, p in o) and all(p(r) for _, p in m)  # noqa: E731
    if rng.random() < 0.25:
        return "-" + text, lambda r, p=pred: not p(r)
    return text, pred


def random_query(rng: random.Random, names, popularity) -> tuple[str, Pred]:
    """Top level: juxtaposed factors, sometimes `A B or C D` (or binds loosest)."""
    def conj() -> tuple[str, Pred]:
        parts = [factor(rng, names, popularity, 2) for _ in range(rng.randint(1, 3))]
        return " ".join(t for t, _ in parts), lambda r, ps=parts: all(p(r) for _, p in ps)
    if rng.random() < 0.3:
        (a, pa), (b, pb) = conj(), conj()
        return f"{a} or {b}", lambda r: pa(r) or pb(r)
    return conj()


# -- engines against the reference --------------------------------------------------------------
@pytest.mark.parametrize("engine", ["bits", "arrays", "probe", "scan", "gather", "sql"])
def test_random_trees_match_reference(world, engine, monkeypatch) -> None:
    db, rows, names, popularity, rng = world
    if engine == "bits":  # the bitmap index (migration 0009) for every query, where it exists
        monkeypatch.setattr(query_mod, "_bits_for", lambda conn, plan: open_bits(conn))
    else:
        monkeypatch.setattr(query_mod, "_bits_for", lambda conn, plan: None)
    if engine == "probe":
        monkeypatch.setattr(query_mod, "_PROBE_RATIO", 0)
    elif engine == "scan":  # whole reads and metatag scans, no dense columns
        monkeypatch.setattr(query_mod, "_PROBE_MAX", 0)
        monkeypatch.setattr(query_mod, "_PROBE_RATIO", 10**9)
        monkeypatch.setattr(query_mod, "open_bits", lambda conn: None)
    elif engine == "gather":  # array engine, metatags of the candidates from dense columns
        monkeypatch.setattr(query_mod, "_PROBE_MAX", 0)
    for _ in range(40):
        text, pred = random_query(rng, names, popularity)
        expected = [r.id for r in rows if pred(r)]
        if engine == "sql":
            assert [p.id for p in select_posts(db, text)] == expected, text
        else:
            assert query_ids(db, text) == expected, text
            assert count_posts(db, text) == len(expected), text


ORDERS = {"score": (lambda r: r.score, True), "score_asc": (lambda r: r.score, False),
          "favcount": (lambda r: r.fav, True), "id_desc": (lambda r: r.id, True),
          "id": (lambda r: r.id, False)}


@pytest.mark.parametrize("plan", ["walk", "walk-gives-up", "full"])
def test_ordered_pages_match_reference(world, plan, monkeypatch) -> None:
    """order: pages by walking the order's index (tiny chunks: many steps and score ties at
    chunk edges), by a walk that gives up half-way, and by the full plan's top-k."""
    db, rows, names, popularity, rng = world
    monkeypatch.setattr(query_mod, "_MIN_CHUNK", 1)
    if plan == "walk":
        monkeypatch.setattr(query_mod, "_WALK_MAX", 10**12)
    elif plan == "walk-gives-up":
        monkeypatch.setattr(query_mod, "_walkable", lambda *args: True)
        monkeypatch.setattr(query_mod, "_WALK_MAX", 3)
    else:
        monkeypatch.setattr(query_mod, "_WALK_MAX", 0)
    for _ in range(12):
        text, pred = random_query(rng, names, popularity)
        order = rng.choice(sorted(ORDERS))
        key, descending = ORDERS[order]
        matched = sorted((r for r in rows if pred(r)), key=lambda r: (key(r), r.id))
        expected = [r.id for r in (reversed(matched) if descending else matched)]
        full = f"({text}) order:{order}"
        limit = rng.choice([4, 25, 60])
        assert query_ids(db, full, limit=limit) == expected[:limit], full
        pages, cursor = [], None
        while page := query_ids(db, full, limit=limit, after_id=cursor):
            pages += page
            cursor = page[-1]
        assert pages == expected, full


def test_id_pages_over_windows_match_reference(world, monkeypatch) -> None:
    db, rows, names, popularity, rng = world
    monkeypatch.setattr(query_mod, "_MIN_WINDOW", 1)
    monkeypatch.setattr(query_mod, "_first_window", lambda plan, limit, span: 37)
    for _ in range(6):
        text, pred = random_query(rng, names, popularity)
        expected = [r.id for r in rows if pred(r)]
        pages, cursor = [], None
        while page := query_ids(db, text, limit=19, after_id=cursor):
            pages += page
            cursor = page[-1]
        assert pages == expected, text


# -- single features ---------------------------------------------------------------------------
def test_wildcards_are_capped_by_popularity(tmp_path: Path) -> None:
    """A pattern matching more than MAX_WILDCARD_TAGS tags uses the most popular ones (ties
    by name), as Danbooru does; a tag outside the cap does not select its posts."""
    db = DanbooruDB.create(tmp_path / "w.db")
    conn = db.connection()
    n_tags = MAX_WILDCARD_TAGS + 30
    rng = random.Random(3)
    pops = {f"cap_{i:03d}": rng.randint(1, 6) for i in range(n_tags)}
    with db.database.atomic():
        for pid in range(1, 2 * n_tags + 1):
            conn.execute(f"INSERT INTO post ({COLUMNS}) VALUES ({','.join('?' * 27)})",
                         (pid, "2020-01-01", 1, "", None, None, 0, 0, 0, None, 0, 0, 0, 0, 10, 10,
                          1, "png", 0, 0, 0, 0, 0, None, None, None, ""))
        for tag_id, (name, pop) in enumerate(sorted(pops.items()), start=1):
            conn.execute("INSERT INTO tag VALUES (?, ?, 0, ?)", (tag_id, name, pop))
            conn.executemany("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)",
                             [(rng.randint(1, 2 * n_tags), tag_id) for _ in range(pop)])
    rows = read_rows(db)
    allowed = wildcard_tags("cap_*", dict(tag_popularity(db)))
    assert len(allowed) == MAX_WILDCARD_TAGS
    expected = [r.id for r in rows if r.tags & allowed]
    assert query_ids(db, "cap_*") == expected
    assert [p.id for p in select_posts(db, "cap_*")] == expected
    assert query_ids(db, "-cap_*") == [r.id for r in rows if not r.tags & allowed]
    dropped = set(pops) - allowed
    assert any(r.tags & dropped and not r.tags & allowed for r in rows)  # the cap matters here
    db.close()


def test_unmatched_wildcard_selects_nothing(world) -> None:
    db, rows, _, _, _ = world
    assert query_ids(db, "nomatch_at_all*") == []
    assert count_posts(db, "-nomatch_at_all*") == len(rows)


@pytest.mark.parametrize("text, expected", [
    # Danbooru's own parser tests (test/unit/post_query_parser_test.rb), as truth tables.
    ("a b or c d", lambda a, b, c, d: (a and b) or (c and d)),
    ("a or b c", lambda a, b, c, d: a or (b and c)),
    ("(a or b) c", lambda a, b, c, d: (a or b) and c),
    ("~a ~b c", lambda a, b, c, d: (a or b) and c),
    ("a ~b", lambda a, b, c, d: a and b),
    ("(~a) ~b ~c", lambda a, b, c, d: a and (b or c)),
    ("~a (~b ~c)", lambda a, b, c, d: a and (b or c)),
    ("~a ~b or ~c ~d", lambda a, b, c, d: a or b or c or d),
    ("~a ~b and ~c ~d", lambda a, b, c, d: (a or b) and (c or d)),
    ("~(a b) ~(c d)", lambda a, b, c, d: (a and b) or (c and d)),
    ("-(a b)", lambda a, b, c, d: not (a and b)),
    ("-(a or b or c)", lambda a, b, c, d: not (a or b or c)),
    ("-(a -(b -(c d)))", lambda a, b, c, d: not (a and not (b and not (c and d)))),
    ("a -(-(b -(-c))) d", lambda a, b, c, d: a and b and c and d),
    ("~(-a) or ~(-b)", lambda a, b, c, d: not a or not b),
    ("a and b and c", lambda a, b, c, d: a and b and c),
    (" ( ( a ) ) ", lambda a, b, c, d: a),
    ("(a b) or (c d) or -(a)", lambda a, b, c, d: (a and b) or (c and d) or not a),
])
def test_grammar_matches_danbooru(text: str, expected) -> None:
    tree = parse_query(text).tree
    for values in itertools.product([False, True], repeat=4):
        truth = dict(zip("abcd", values))
        assert evaluate(tree, truth) == expected(*values), (text, truth)


def evaluate(node, truth: dict[str, bool]) -> bool:
    if isinstance(node, TagTerm):
        return truth[node.name]
    if isinstance(node, Not):
        return not evaluate(node.child, truth)
    if isinstance(node, And):
        return all(evaluate(c, truth) for c in node.children)
    if isinstance(node, Or):
        return any(evaluate(c, truth) for c in node.children)
    raise AssertionError(node)


def test_tags_with_parentheses_and_metatag_forms() -> None:
    assert parse_query("(foo_(bar))").tree == TagTerm("foo_(bar)")
    assert parse_query("foo_(bar_(baz))").tree == TagTerm("foo_(bar_(baz))")
    assert parse_query("(a or hatsune_miku_(append))").tree == Or(
        (TagTerm("a"), TagTerm("hatsune_miku_(append)")))
    assert parse_query(";)").tree == TagTerm(";)")
    assert parse_query("(*_hair)").tree == Wildcard("*_hair")
    negated = parse_query("-rating:e -score:<0 -id:1,2").tree
    assert [(f.name, f.negated) for f in negated.children] == [
        ("rating", True), ("score", True), ("id", True)]
    assert parse_query("(score:>10)").tree == MetaFilter(
        "score", ranges=parse_query("score:>10").tree.ranges)
    assert parse_query("(1girl solo) order:score").order.name == "score"
    # Danbooru: order: matches every post where it stands, but never beside an `or`.
    assert not parse_query("(a or b) order:score_asc").order.descending
    with pytest.raises(QueryError, match="with 'or'"):
        parse_query("a or b order:score_asc")


@pytest.mark.parametrize("text, fragment", [
    ("(a", "unclosed '('"), ("a )", "needs an opening '('"), (")a", "expected a tag"), ("a or", "'or' needs"),
    ("or a", "expected a tag"), ("and", "expected a tag"), ("a and", "'and' needs"),
    ("()", "empty parentheses"), ("a -", "after '-'"), ("~", "after '~'"), ("--a", "after '-'"),
    ("-~a", "after '-'"), ("-(a order:score)", "can't be used under '-'"),
    ("~order:score ~a", "~ group"),
    ("score:1,,x", "accepted forms"), ("id:1,x", "integer"), ("score:5..10,", "accepted forms"),
])
def test_bad_syntax_is_one_sentence(text: str, fragment: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_query(text)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_sql_engine_agrees_on_unmigrated_file(tmp_path: Path) -> None:
    """The file as published (no covering indexes, no order indexes): same answers."""
    rows = random_rows(7)
    db = write_rows(tmp_path / "u.db", rows, migrated=False)
    assert not db.has_table("kdata_tag_alias")
    with sqlite3.connect(db.path) as conn:  # really the published indexes only
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'kdata%'").fetchone()[0] == 0
    text = "(cat_ears or dog_ears) -comic *_hair order:score"
    expected = [r.id for r in sorted(
        (r for r in rows if r.tags & {"cat_ears", "dog_ears"} and "comic" not in r.tags
         and r.tags & {"long_hair", "short_hair"}), key=lambda r: (r.score, r.id), reverse=True)]
    assert query_ids(db, text) == expected
    assert query_ids(db, text, limit=3) == expected[:3]
    db.close()


def test_bitmap_index_is_never_stale(tmp_path: Path, monkeypatch) -> None:
    """Any write to post or posttagrelation retires the index in the same transaction; queries
    then answer from the tables, and refresh_if_stale brings the index back, current."""
    monkeypatch.setattr(query_mod, "_bits_for", lambda conn, plan: open_bits(conn))
    rows = random_rows(11)
    db = write_rows(tmp_path / "b.db", rows, migrated=True)
    conn = db.connection()
    assert open_bits(conn) is not None
    text = "1girl -solo score:>5 or rating:e"

    def expected() -> int:
        return sum(1 for r in read_rows(db) if ("1girl" in r.tags and "solo" not in r.tags
                                                and r.score > 5) or r.rating == 3)
    assert count_posts(db, text) == expected()
    writes = [
        "UPDATE post SET score = score + 7 WHERE id IN (SELECT id FROM post ORDER BY id LIMIT 40)",
        "UPDATE post SET rating = 3 WHERE id = (SELECT max(id) FROM post)",
        "DELETE FROM posttagrelation WHERE id IN (SELECT id FROM posttagrelation LIMIT 30)",
        "INSERT INTO posttagrelation (post_id, tag_id) SELECT id, 1 FROM post LIMIT 50",
        "DELETE FROM post WHERE id = (SELECT min(id) FROM post)",
    ]
    for sql in writes:
        with db.database.atomic():
            conn.execute(sql)
        assert open_bits(conn) is None, sql  # retired by the write itself
        assert count_posts(db, text) == expected(), sql
        assert refresh_if_stale(db) and open_bits(conn) is not None
        assert count_posts(db, text) == expected(), sql
        assert not refresh_if_stale(db)  # current: nothing to do
    db.close()


def test_empty_migrated_file_has_no_bitmaps(tmp_path: Path) -> None:
    """`kdata db init` then migrate: the index exists but covers nothing, queries still run."""
    db = DanbooruDB.create(tmp_path / "e.db")
    run_migrations(db, MIGRATIONS)
    assert open_bits(db.connection()) is None
    assert count_posts(db, "-rating:e") == 0
    assert query_ids(db, "-rating:e order:score", limit=5) == []
    db.close()


def test_long_id_lists(world) -> None:
    """Thousands of ids in one id: list run as one IN list in every engine (no OR chain past
    SQLite's expression depth), and an over-long list is a clear error."""
    db, rows, _, _, _ = world
    chosen = [r.id for r in rows[::2]] + list(range(10**7, 10**7 + 1500))
    text = "id:" + ",".join(map(str, chosen)) + ",>99999999 -rating:e"
    expected = [r.id for r in rows if r.id in set(chosen) and r.rating != 3]
    assert query_ids(db, text) == expected
    assert count_posts(db, text) == len(expected)
    assert [p.id for p in select_posts(db, text)] == expected
    with pytest.raises(QueryError, match="at most"):
        count_posts(db, "id:" + ",".join(map(str, range(1, 20_001))))
