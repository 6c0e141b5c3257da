"""A deterministic, realistic Danbooru2023-shaped sqlite: `write_sample_db(path, posts, seed)`.

Tags are the 20,000 most used real Danbooru tags (bundled CSV) drawn with their real popularity
curve; posts get realistic ratings, dates, sizes, scores and URLs. Everything is generated as
numpy columns (no per-post Python loop except string formatting) and bulk-inserted over a raw
sqlite3 connection with journaling off, indexes dropped during the load and rebuilt after, so
1M posts (~26M tag rows) take well under two minutes.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from kohaku_data.db.enums import Rating, TagType
from kohaku_data.db.handle import published_schema_sql
from kohaku_data.errors import KdataError


class SampleError(KdataError):
    """Bad arguments for the sample generator, or an output that must not be overwritten."""


# Tag probability = real post count / this (1girl ≈ 60%, solo ≈ 50%, highres ≈ 55% of posts).
_POSTS_SCALE = 10.0e6
# General tags are thinned so that the mean tag count per post stays near Danbooru's ~25.
_GENERAL_THIN = 0.78
_RATING_P = (0.35, 0.30, 0.15, 0.20)  # g s q e
_EXTS = np.array(["jpg", "png", "gif", "webp", "avif"])
_EXT_P = (0.70, 0.25, 0.02, 0.02, 0.01)
_EXT_BYTES_PER_PX = np.array([0.45, 1.6, 0.8, 0.3, 0.15])
_FIRST_YEAR, _LAST_YEAR = 2005, 2024
_DUMP_TIME_MS = int(np.datetime64("2025-01-01T00:00:00", "ms").astype(np.int64))
# Tags only ever put on questionable/explicit posts (rating-consistent tag sets).
_NSFW_TAGS = frozenset(
    "nipples pussy sex penis nude completely_nude cum vaginal anus censored uncensored "
    "mosaic_censoring bar_censor pubic_hair cum_in_pussy fellatio oral areolae topless "
    "bottomless clitoris erection testicles cum_on_body paizuri spread_legs".split()
)
# Meta tags Danbooru sets from the file itself: derived from size/format, never drawn at random.
_DERIVED_META = frozenset(
    "highres absurdres incredibly_absurdres lowres wide_image tall_image animated animated_gif "
    "video sound animated_png".split()
)
_COUNT_TAGS = ("1girl", "2girls", "3girls", "4girls", "5girls", "6+girls",
               "1boy", "2boys", "3boys", "4boys", "5boys", "6+boys")
_COMPOSITION_TAGS = frozenset(_COUNT_TAGS) | {"solo", "multiple_girls", "multiple_boys", "no_humans", "1other"}


# --------------------------------------------------------------------------------------------
# The bundled tag list
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TagTable:
    """The bundled real tags; index i has tag id i + 1 in every sample DB."""

    names: list[str]
    types: np.ndarray  # TagType values (sqlite numbering)
    counts: np.ndarray  # real Danbooru post counts
    aliases: list[list[str]]

    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def load_tag_table() -> TagTable:
    """Read `resources/danbooru-tags-top20k.csv` (name,category,post_count,"aliases")."""
    text = resources.files("kohaku_data.resources").joinpath("danbooru-tags-top20k.csv").read_text()
    names, types, counts, aliases = [], [], [], []
    for row in csv.reader(text.splitlines()):
        if not row:
            continue
        names.append(row[0])
        types.append(int(TagType.from_danbooru_category(int(row[1]))))
        counts.append(int(row[2]))
        # "/lh"-style entries are autocomplete shortcuts of the source list, not Danbooru aliases.
        raw = row[3].split(",") if len(row) > 3 and row[3] else []
        aliases.append([a for a in raw if a and not a.startswith("/")])
    return TagTable(names, np.array(types, np.int8), np.array(counts, np.int64), aliases)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
@dataclass
class _Sample:
    posts: dict[str, list]  # column name -> values, in the published column order
    rel_post: np.ndarray  # post ids of posttagrelation rows, sorted by (post, tag)
    rel_tag: np.ndarray  # tag ids
    used_tags: np.ndarray  # indices into TagTable of tags with at least one row
    popularity: np.ndarray  # per used tag


def _rng(seed: int, stream: int) -> np.random.Generator:
    # One independent stream per component: changing one generator never shifts the others.
    return np.random.default_rng([seed, stream])


def _created_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sorted UTC timestamps (ms) 2005–2024, uploads growing ~22% a year like Danbooru's."""
    years = np.arange(_FIRST_YEAR, _LAST_YEAR + 1)
    weights = 1.22 ** (years - _FIRST_YEAR)
    weights[0] *= 0.6  # Danbooru opened in May 2005
    year = rng.choice(years, size=n, p=weights / weights.sum())
    first_day = {_FIRST_YEAR: "2005-05-24"}  # Danbooru's first upload
    start = np.array([first_day.get(y, f"{y}-01-01") for y in years], "datetime64[ms]").astype(np.int64)
    stop = np.array([f"{y + 1}-01-01" for y in years], "datetime64[ms]").astype(np.int64)
    k = year - _FIRST_YEAR
    ms = start[k] + (rng.random(n) * (stop[k] - start[k])).astype(np.int64)
    return np.sort(ms)


def _iso(ms: np.ndarray) -> list[str]:
    """UTC ms → Danbooru's ISO strings in US Eastern time (DST approximated as Apr–Oct)."""
    month = ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    dst = (month >= 4) & (month <= 10)
    local = (ms - np.where(dst, 4, 5) * 3_600_000).astype("datetime64[ms]")
    text = np.datetime_as_string(local, unit="ms").tolist()
    return [t + ("-04:00" if d else "-05:00") for t, d in zip(text, dst.tolist())]


def _sizes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Width/height: long side log-normal (median 1800), many aspect ratios, portrait-heavy."""
    ratios = np.array([1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 1.414, 5 / 4, 3.0, 4.0])
    ratio_p = np.array([0.12, 0.22, 0.20, 0.16, 0.06, 0.14, 0.06, 0.025, 0.015])
    ratio = rng.choice(ratios, size=n, p=ratio_p / ratio_p.sum())
    free = rng.random(n) < 0.25  # a quarter have an arbitrary ratio (crops, scans)
    ratio = np.where(free, np.exp(np.abs(rng.normal(0, 0.35, n))), ratio)
    long = np.clip(rng.lognormal(np.log(1600), 0.55, n), 240, 12000)
    short = np.maximum(long / ratio, 64)
    portrait = rng.random(n) < 0.68
    width = np.where(portrait, short, long).round().astype(np.int64)
    height = np.where(portrait, long, short).round().astype(np.int64)
    return width, height


def _scores(rng: np.random.Generator, created: np.ndarray) -> tuple[np.ndarray, ...]:
    """Heavy-tailed up/down votes, a little higher for older posts; fav ≈ 1.3 × score."""
    n = len(created)
    age_years = (_DUMP_TIME_MS - created) / (365.25 * 86_400_000)
    up = np.floor(rng.lognormal(np.log(6), 1.2, n) * (1 + 0.03 * age_years)).astype(np.int64)
    down = rng.poisson(0.2 + 0.02 * up)
    disliked = rng.random(n) < 0.03  # the few controversial posts that end up negative
    down = down + np.where(disliked, rng.poisson(12, n) + up, 0)
    score = up - down
    fav = np.maximum(0, np.round(score * 1.3 + rng.normal(0, 2 + 0.2 * np.abs(score)))).astype(np.int64)
    return score, up, down, fav


def _md5s(rng: np.random.Generator, n: int) -> list[str]:
    hexed = rng.bytes(16 * n).hex()
    return [hexed[i:i + 32] for i in range(0, 32 * n, 32)]


def _sources(rng: np.random.Generator, created: list[str], artist: list[str]) -> tuple[list, list]:
    """Mostly pixiv and twitter URLs (pixiv ids grow with time), some other sites, some empty."""
    n = len(created)
    kind = rng.choice(4, size=n, p=[0.45, 0.30, 0.10, 0.15]).tolist()
    frac = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    pixiv = (1_000 + frac * 120_000_000 + rng.integers(0, 200_000, n)).astype(np.int64).tolist()
    tweet = rng.integers(10**17, 18 * 10**17, n).tolist()
    sources, pixiv_ids = [], []
    for k, c, a, pid, tw in zip(kind, created, artist, pixiv, tweet):
        if k == 0:
            path = f"{c[:4]}/{c[5:7]}/{c[8:10]}/{c[11:13]}/{c[14:16]}/{c[17:19]}"
            sources.append(f"https://i.pximg.net/img-original/img/{path}/{pid}_p0.png")
            pixiv_ids.append(pid)
            continue
        pixiv_ids.append(None)
        if k == 1:
            sources.append(f"https://twitter.com/{a}/status/{tw}")
        elif k == 2:
            sources.append(f"https://www.deviantart.com/{a.replace('_', '-')}/art/{tw % 10**9}")
        else:
            sources.append("")
    return sources, pixiv_ids


def _family(rng: np.random.Generator, ids: np.ndarray) -> tuple[list, np.ndarray]:
    """~4% of posts are children of one of the 30 posts before them."""
    n = len(ids)
    pos = np.arange(n)
    child = (rng.random(n) < 0.04) & (pos > 0)
    parent_pos = np.maximum(0, pos - rng.integers(1, 31, n))
    parent = np.where(child, ids[parent_pos], 0)
    has_children = np.isin(ids, parent[child]).astype(np.int64)
    return [int(p) if c else None for p, c in zip(parent.tolist(), child.tolist())], has_children


def _post_columns(seed: int, n: int, artist: list[str]) -> dict[str, list]:
    rng = _rng(seed, 1)
    created = _created_ms(rng, n)
    ids = np.cumsum(1 + rng.geometric(0.8, n) - 1)  # gaps: deleted/expunged ids
    updated = np.minimum(created + rng.exponential(400 * 86_400_000, n).astype(np.int64), _DUMP_TIME_MS)
    created_s = _iso(created)
    width, height = _sizes(rng, n)
    ext_i = rng.choice(len(_EXTS), size=n, p=_EXT_P)
    ext = _EXTS[ext_i]
    size = (width * height * _EXT_BYTES_PER_PX[ext_i] * rng.lognormal(0, 0.4, n)).astype(np.int64)
    score, up, down, fav = _scores(rng, created)
    md5 = _md5s(rng, n)
    source, pixiv_id = _sources(rng, created_s, artist)
    parent, has_children = _family(rng, ids)
    banned = rng.random(n) < 0.003
    has_large = ((width > 850) & np.isin(ext, ["jpg", "png", "webp", "avif"])).astype(np.int64)
    rank = np.minimum(rng.zipf(1.4, n), 500_000)  # a few uploaders do most of the uploads
    urls = _urls(md5, ext.tolist(), has_large.tolist(), banned.tolist())
    return {
        "id": ids.tolist(), "created_at": created_s,
        "uploader_id": ((rank * 104_729) % 999_983 + 1).tolist(), "source": source, "md5": md5,
        "parent_id": parent, "has_children": has_children.tolist(),
        "is_deleted": (rng.random(n) < 0.06).astype(np.int64).tolist(),
        "is_banned": banned.astype(np.int64).tolist(), "pixiv_id": pixiv_id,
        "has_active_children": has_children.tolist(),
        "bit_flags": (rng.random(n) < 0.02).astype(np.int64).tolist(),
        "has_large": has_large.tolist(), "has_visible_children": has_children.tolist(),
        "image_width": width.tolist(), "image_height": height.tolist(),
        "file_size": np.maximum(size, 2_000).tolist(), "file_ext": ext.tolist(),
        "rating": rng.choice(4, size=n, p=_RATING_P).tolist(),
        "score": score.tolist(), "up_score": up.tolist(), "down_score": down.tolist(),
        "fav_count": fav.tolist(), **urls, "updated_at": _iso(updated),
    }


def _urls(md5: list[str], ext: list[str], has_large: list[int], banned: list[bool]) -> dict[str, list]:
    cdn = "https://cdn.donmai.us"
    file_url, large, preview = [], [], []
    for m, e, lg, b in zip(md5, ext, has_large, banned):
        if b:  # banned posts have no public files
            file_url.append(None), large.append(None), preview.append(None)
            continue
        d = f"{m[:2]}/{m[2:4]}"
        file_url.append(f"{cdn}/original/{d}/{m}.{e}")
        large.append(f"{cdn}/sample/{d}/sample-{m}.jpg" if lg else file_url[-1])
        preview.append(f"{cdn}/180x180/{d}/{m}.jpg")
    return {"file_url": file_url, "large_file_url": large, "preview_file_url": preview}


# -- tags --------------------------------------------------------------------------------------
def _pick_per_post(rng: np.random.Generator, n: int, count_p: list[float], pool: np.ndarray,
                   weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each post draws k ~ count_p tags from `pool`, ∝ `weight` (Zipf-like: real post counts)."""
    k = rng.choice(len(count_p), size=n, p=count_p)
    posts = np.repeat(np.arange(n), k)
    tags = pool[rng.choice(len(pool), size=len(posts), p=weight / weight.sum())]
    return posts, tags


def _bernoulli(rng: np.random.Generator, members: np.ndarray, tags: np.ndarray,
               p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put tag t on each post of `members` with probability p[t], without a per-tag scan.

    Rare tags (p < 2%): draw each tag's count, then that many posts with replacement; the
    duplicates this makes are rare and removed by the final unique. Common tags: exact sampling
    without replacement, one call per tag (a few hundred tags).
    """
    m = len(members)
    common = p >= 0.02
    k = rng.binomial(m, p[~common])
    posts = [members[rng.integers(0, m, int(k.sum()))]]
    tag_list = [np.repeat(tags[~common], k)]
    for t, pt in zip(tags[common].tolist(), p[common].tolist()):
        chosen = rng.choice(m, size=rng.binomial(m, pt), replace=False)
        posts.append(members[chosen])
        tag_list.append(np.full(len(chosen), t))
    return np.concatenate(posts), np.concatenate(tag_list)


def _composition(rng: np.random.Generator, n: int, idx: dict[str, int],
                 counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consistent people-count tags: 1girl/2girls.., 1boy.., solo, multiple_*, no_humans."""
    gp = np.array([counts[idx[t]] for t in _COUNT_TAGS[:6]]) / _POSTS_SCALE
    girls = rng.choice(7, size=n, p=np.concatenate([[1 - gp.sum()], gp]))
    bp = np.array([counts[idx[t]] for t in _COUNT_TAGS[6:]], float)
    any_boy = rng.random(n) < np.where(girls == 0, 0.55, 0.07)
    boys = np.where(any_boy, 1 + rng.choice(6, size=n, p=bp / bp.sum()), 0)
    nobody = (girls == 0) & (boys == 0)
    flags = {
        "solo": (girls + boys == 1) & (rng.random(n) < 0.76),
        "multiple_girls": girls >= 2, "multiple_boys": boys >= 2,
        "no_humans": nobody & (rng.random(n) < 0.15),
        "1other": nobody & (rng.random(n) < 0.07),
    }
    for i, name in enumerate(_COUNT_TAGS[:6]):
        flags[name] = girls == i + 1
    for i, name in enumerate(_COUNT_TAGS[6:]):
        flags[name] = boys == i + 1
    posts = [np.flatnonzero(mask) for mask in flags.values()]
    tags = [np.full(len(p), idx[name]) for name, p in zip(flags, posts)]
    return np.concatenate(posts), np.concatenate(tags)


def resolution_tags(width: np.ndarray, height: np.ndarray) -> dict[str, np.ndarray]:
    """Meta tags Danbooru derives from the image size: tag name → mask over posts."""
    return {
        "incredibly_absurdres": (width >= 10_000) | (height >= 10_000),
        "absurdres": (width >= 3200) | (height >= 2400),
        "highres": (width >= 1600) | (height >= 1200),
        "lowres": (width <= 500) & (height <= 500),
        "wide_image": (width >= 1024) & (width >= 4 * height),
        "tall_image": (height >= 1024) & (height >= 4 * width),
    }


def _size_meta(width: np.ndarray, height: np.ndarray, ext: np.ndarray, rng: np.random.Generator,
               idx: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resolution and animation meta tags by Danbooru's own rules."""
    flags = resolution_tags(width, height)
    animated = (ext == "gif") & (rng.random(len(ext)) < 0.4)
    flags["animated"] = flags["animated_gif"] = animated
    flags = {k: v for k, v in flags.items() if k in idx}
    posts = [np.flatnonzero(mask) for mask in flags.values()]
    tags = [np.full(len(p), idx[name]) for name, p in zip(flags, posts)]
    return np.concatenate(posts), np.concatenate(tags)


def _relations(seed: int, table: TagTable, cols: dict[str, list]) -> tuple[np.ndarray, np.ndarray]:
    """(post index, tag index) pairs, unique and sorted by post then tag."""
    rng = _rng(seed, 2)
    n = len(cols["id"])
    idx = table.index()
    types, counts = table.types, table.counts
    parts = [_composition(rng, n, idx, counts)]
    for ttype, count_p in ((TagType.COPYRIGHT, [0.12, 0.78, 0.10]),
                           (TagType.CHARACTER, [0.35, 0.45, 0.13, 0.07])):
        pool = np.flatnonzero(types == ttype)
        parts.append(_pick_per_post(rng, n, count_p, pool, counts[pool].astype(float)))
    width, height = np.array(cols["image_width"]), np.array(cols["image_height"])
    parts.append(_size_meta(width, height, np.array(cols["file_ext"]), rng, idx))
    excluded = _COMPOSITION_TAGS | _DERIVED_META | _NSFW_TAGS
    free = np.array([name not in excluded for name in table.names])
    p = np.minimum(counts / _POSTS_SCALE, 0.95)
    p = np.where(types == TagType.GENERAL, p * _GENERAL_THIN, p)
    drawn = np.flatnonzero(free & ((types == TagType.GENERAL) | (types == TagType.META)))
    parts.append(_bernoulli(rng, np.arange(n), drawn, p[drawn]))
    # NSFW tags only on q/e posts, at their real overall frequency.
    lewd = np.flatnonzero(np.array(cols["rating"]) >= Rating.QUESTIONABLE)
    nsfw = np.array([idx[t] for t in sorted(_NSFW_TAGS) if t in idx])
    if len(lewd):
        share = len(lewd) / n
        parts.append(_bernoulli(rng, lewd, nsfw, np.minimum(p[nsfw] / share, 0.9)))
    parts.append(_artists(seed, n, table))
    key = np.concatenate([a.astype(np.int64) * len(table.names) + b for a, b in parts])
    key.sort()  # sort + neighbour compare: far faster than np.unique's hash path here
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    return key // len(table.names), key % len(table.names)


def _artists(seed: int, n: int, table: TagTable) -> tuple[np.ndarray, np.ndarray]:
    """Every post has an artist (the first is its main one); 7% have two or three."""
    rng = _rng(seed, 3)
    pool = np.flatnonzero(table.types == TagType.ARTIST)
    # np.repeat keeps posts in order, so a post's first row is its main artist.
    return _pick_per_post(rng, n, [0.0, 0.93, 0.06, 0.01], pool, table.counts[pool].astype(float))


def _main_artists(seed: int, n: int, table: TagTable) -> list[str]:
    posts, tags = _artists(seed, n, table)
    first = np.searchsorted(posts, np.arange(n))
    return [table.names[t] for t in tags[first].tolist()]


def generate(seed: int, posts: int, table: TagTable | None = None) -> _Sample:
    """All rows of a sample DB, in memory (column lists and relation arrays)."""
    table = table or load_tag_table()
    cols = _post_columns(seed, posts, _main_artists(seed, posts, table))
    rel_post_i, rel_tag_i = _relations(seed, table, cols)
    ids = np.array(cols["id"], np.int64)
    popularity = np.bincount(rel_tag_i, minlength=len(table.names))
    used = np.flatnonzero(popularity)
    return _Sample(cols, ids[rel_post_i], rel_tag_i + 1, used, popularity[used])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _index_statements() -> list[str]:
    """The published CREATE INDEX statements, verbatim (sqlite_master keeps the text)."""
    statements = [s[s.index("CREATE"):].strip() for s in published_schema_sql().split(";") if "CREATE" in s]
    return [s for s in statements if s.split("(")[0].split()[1] in ("INDEX", "UNIQUE")]


def _index_name(statement: str) -> str:
    return statement.split('"')[1]


def _chunks(columns: list[list], size: int):
    total = len(columns[0])
    for start in range(0, total, size):
        yield zip(*(c[start:start + size] for c in columns))


def _load(conn: sqlite3.Connection, sample: _Sample, table: TagTable, log) -> None:
    indexes = _index_statements()
    for statement in indexes:
        conn.execute(f'DROP INDEX IF EXISTS "{_index_name(statement)}"')
    names = list(sample.posts)
    insert = f'INSERT INTO "post" ({", ".join(names)}) VALUES ({", ".join("?" * len(names))})'
    for rows in _chunks(list(sample.posts.values()), 100_000):
        conn.executemany(insert, rows)
    log("posts inserted")
    used = sample.used_tags.tolist()
    conn.executemany(
        'INSERT INTO "tag" (id, name, type, popularity) VALUES (?, ?, ?, ?)',
        ((i + 1, table.names[i], int(table.types[i]), int(c))
         for i, c in zip(used, sample.popularity.tolist())),
    )
    # Ids are assigned by sqlite in insertion order (1..R): rows sorted by post, then tag.
    rel = 'INSERT INTO "posttagrelation" (post_id, tag_id) VALUES (?, ?)'
    step = 1_000_000
    for start in range(0, len(sample.rel_post), step):
        conn.executemany(rel, zip(sample.rel_post[start:start + step].tolist(),
                                  sample.rel_tag[start:start + step].tolist()))
    log(f"{len(sample.rel_post):,} tag relations inserted")
    for statement in indexes:
        conn.execute(statement)
    log("indexes built")
    _write_aliases(conn, [table.names[i] for i in used], [table.aliases[i] for i in used])


def write_aliases(conn: sqlite3.Connection) -> int:
    """Aliases (from the bundled tag list) of the tags in the file, into `kdata_tag_alias` when
    migrations made it; returns the rows added."""
    table = load_tag_table()
    known = dict(zip(table.names, table.aliases))
    names = [r[0] for r in conn.execute('SELECT name FROM "tag" ORDER BY id')]
    return _write_aliases(conn, names, [known.get(n, []) for n in names])


def _write_aliases(conn: sqlite3.Connection, names: list[str], aliases: list[list[str]]) -> int:
    """Aliases of the used tags into `kdata_tag_alias`, only where migrations made that table."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kdata_tag_alias'"
    ).fetchone()
    if not exists:
        return 0
    taken = set(names)  # an alias never shadows a real tag name
    rows = [(a, name) for name, al in zip(names, aliases) for a in al if a not in taken]
    before = conn.total_changes
    conn.executemany('INSERT OR IGNORE INTO "kdata_tag_alias" (alias, tag_name) VALUES (?, ?)', rows)
    return conn.total_changes - before


def _row_count(path: Path) -> int | None:
    """Rows in the published tables of an existing file, or None if it is not such a file."""
    try:
        with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as conn:
            return sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                       for t in ("post", "tag", "posttagrelation"))
    except sqlite3.DatabaseError:
        return None


def write_sample_db(path: Path, posts: int, seed: int = 0, *, progress: bool = False) -> None:
    """Write a Danbooru2023-schema sqlite with `posts` realistic posts, deterministic per seed.

    A new file is written to a temporary name and moved into place. An existing file that has
    the published tables but no rows (e.g. made by `kdata db init`, migrations applied) is
    filled in place, aliases included; a file with posts is never overwritten.
    """
    path = Path(path)
    if posts < 1:
        raise SampleError(f"--posts must be at least 1 (got {posts})")
    existing = path.exists() and path.stat().st_size > 0
    if existing and _row_count(path) != 0:
        raise SampleError(
            f"{path} already exists and is not an empty Danbooru2023 database: "
            "choose another output or remove it first (kdata sample --force)"
        )
    t0 = time.perf_counter()
    def log(msg: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)
    table = load_tag_table()
    sample = generate(seed, posts, table)
    log(f"generated {posts:,} posts, {len(sample.rel_post):,} tag relations")
    target = path if existing else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(target, sample, table, fresh=not existing, log=log)
        if not existing:
            os.replace(target, path)
    except BaseException:
        if not existing:
            target.unlink(missing_ok=True)
        raise
    log(f"wrote {path}")


def _write(target: Path, sample: _Sample, table: TagTable, *, fresh: bool, log) -> None:
    if fresh:
        target.unlink(missing_ok=True)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        if fresh:
            conn.executescript(published_schema_sql())
        # No journal while loading: a crash leaves a temp file we delete, never a half-filled DB.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        conn.execute("BEGIN")
        _load(conn, sample, table, log)
        conn.execute("COMMIT")
    finally:
        conn.close()
