"""A deterministic, realistic Danbooru2023-shaped sqlite: `write_sample_db(path, posts, seed)`.

Tags are the 20,000 most used real Danbooru tags (bundled CSV) drawn with their real popularity
curve, and big samples a synthetic long tail (tail.py: ~1M tag names at full size); posts get
realistic ratings, dates, sizes, scores and URLs. Everything is generated as numpy columns (no
per-post Python loop except string formatting), one chunk of posts at a time (memory is a few
chunks, whatever the size), in a thread one chunk ahead of the writer, which inserts many rows
a statement over a raw sqlite3 connection with journaling off; the indexes whose keys arrive in
order are kept during the load, the one on posttagrelation.tag_id is built after with a small
sort cache. 1M posts (~26M tag rows) take ~20 s on 2 cores, 7.8M (~194M) ~2.5 min, ~1.7 GB.
"""

from __future__ import annotations

import csv
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from itertools import chain
from pathlib import Path

import numpy as np

from kohaku_data.ahead import Ahead
from kohaku_data.db.enums import Rating, TagType
from kohaku_data.db.handle import published_schema_sql
from kohaku_data.errors import KdataError
from kohaku_data.sample.tail import Tail, default_tail_tags, make_tail


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
# Generation, one chunk of posts at a time
# --------------------------------------------------------------------------------------------
# Posts are generated in chunks of CHUNK_POSTS (fixed: it is part of what a seed means), each
# chunk from random streams of its own (seed, component, chunk index), so memory holds one
# chunk's rows however big the sample (7.8M posts and ~190M relations in about a gigabyte).
# A chunk depends on the others only through small, whole-sample draws and a little carry:
# - creation times are sorted over the sample (ids follow time): each day's upload count is
#   drawn once (~7,000 numbers) and a post's moment in its day is a hash of (seed, position);
# - ids are a running sum of gaps, parents up to 30 posts back (both carried to the next chunk),
#   and a post's has_children needs the next chunk's first children (their draws are repeated);
# - the long tail (tail.py) is drawn once, a few bytes per relation, and sliced per chunk.
CHUNK_POSTS = 1 << 17
_FAMILY_REACH = 30
# The danbooru2026 snapshot's id blocks where is_deleted, uploader_id and is_banned are NULL (a
# batch artefact): stored as the defaults (0, as `kdata db import` stores them) and, where the
# file has migration 0012's table, listed in kdata_post_unknown. Ids lo <= id < hi; a sample
# reaches the second block from ~8M posts (ids grow ~1.25 a post).
UNKNOWN_BLOCKS = ((4_800_000, 4_830_000), (10_070_000, 11_790_000))
UNKNOWN_FIELDS = "is_deleted,uploader_id,is_banned"
_DAY_MS = 86_400_000


@dataclass
class _Sample:
    posts: dict[str, list]  # column name -> values, in the published column order
    rel_post: np.ndarray  # post ids of posttagrelation rows, sorted by (post, tag)
    rel_tag: np.ndarray  # tag ids
    used_tags: np.ndarray  # indices into TagTable of tags with at least one row
    popularity: np.ndarray  # per used tag


@dataclass(frozen=True)
class _Chunk:
    """One chunk's rows: post columns and its relations (ids), sorted by (post, tag)."""

    posts: dict[str, list]
    rel_post: np.ndarray
    rel_tag: np.ndarray  # tag ids (index + 1)


@dataclass(frozen=True)
class _Plan:
    """What every chunk shares: the sample's small whole-sample draws and the tag model."""

    seed: int
    posts: int
    table: TagTable  # the real tags, then the tail's
    idx: dict[str, int]  # real tag name -> index
    day_start: np.ndarray  # UTC ms of each day's start
    day_end: np.ndarray  # posts uploaded up to each day's end (cumulative)
    tail: Tail
    drawn: np.ndarray  # general/meta tags drawn independently per post
    p: np.ndarray  # per tag: chance to be on a post
    nsfw: np.ndarray  # tags only put on questionable/explicit posts

    @property
    def chunks(self) -> int:
        return -(-self.posts // CHUNK_POSTS)


@dataclass
class _Carry:
    """What chunk j + 1 needs from chunk j: the last id and the ids of the last 30 posts."""

    last_id: int = 0
    recent: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def _rng(seed: int, stream: int, chunk: int | None = None) -> np.random.Generator:
    # One independent stream per component (and chunk): changing one never shifts the others.
    return np.random.default_rng([seed, stream] if chunk is None else [seed, stream, chunk])


def _plan(seed: int, posts: int, table: TagTable, tail_tags: int) -> _Plan:
    tail = make_tail(_rng(seed, 5), tail_tags, posts, len(table.names))
    names = list(table.names)
    taken = set(names)  # a tail name never equals a real one (nor another tail name)
    for name in tail.names:
        while name in taken:
            name += "_t"
        taken.add(name)
        names.append(name)
    full = TagTable(names, np.concatenate([table.types, tail.types]),
                    np.concatenate([table.counts, tail.counts]), table.aliases + [[]] * len(tail.names))
    idx = table.index()
    types, counts = table.types, table.counts
    excluded = _COMPOSITION_TAGS | _DERIVED_META | _NSFW_TAGS
    free = np.array([name not in excluded for name in table.names])
    p = np.minimum(counts / _POSTS_SCALE, 0.95)
    p = np.where(types == TagType.GENERAL, p * _GENERAL_THIN, p)
    drawn = np.flatnonzero(free & ((types == TagType.GENERAL) | (types == TagType.META)))
    nsfw = np.array([idx[t] for t in sorted(_NSFW_TAGS) if t in idx], np.int64)
    day_start, day_end = _days(_rng(seed, 1), posts)
    return _Plan(seed, posts, full, idx, day_start, day_end, tail, drawn, p, nsfw)


def _days(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every day from Danbooru's first upload (2005-05-24) to 2024-12-31 and the cumulative
    uploads at its end: uploads grow ~22% a year like Danbooru's, uniform within a year."""
    days = np.arange(np.datetime64("2005-05-24"), np.datetime64(f"{_LAST_YEAR + 1}-01-01"))
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970 - _FIRST_YEAR
    weight = 1.22 ** year / np.bincount(year)[year]
    weight[year == 0] *= 0.6  # Danbooru opened in May 2005
    counts = rng.multinomial(n, weight / weight.sum())
    return days.astype("datetime64[ms]").astype(np.int64), np.cumsum(counts)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _created_ms(plan: _Plan, start: int, stop: int) -> np.ndarray:
    """Sorted UTC timestamps (ms) of posts start..stop-1, the same whatever the chunking: the
    whole days around the range are drawn (hash of seed and position) and sorted."""
    first, last = np.searchsorted(plan.day_end, [start, stop - 1], side="right")
    lo = int(plan.day_end[first - 1]) if first else 0
    hi = int(plan.day_end[last])
    pos = np.arange(lo, hi, dtype=np.uint64)
    salt = _splitmix64(np.array([plan.seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    unit = (_splitmix64(pos ^ salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    day = np.searchsorted(plan.day_end, pos.astype(np.int64), side="right")
    ms = plan.day_start[day] + (unit * _DAY_MS).astype(np.int64)
    ms.sort()  # days are disjoint and in order: a plain sort sorts within each day
    return ms[start - lo:stop - lo]


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


def _sources(rng: np.random.Generator, created: list[str], artist: list[str],
             frac: np.ndarray) -> tuple[list, list]:
    """Mostly pixiv and twitter URLs (pixiv ids grow with time), some other sites, some empty."""
    n = len(created)
    kind = rng.choice(4, size=n, p=[0.45, 0.30, 0.10, 0.15]).tolist()
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


def _family_draws(seed: int, chunk: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which posts of a chunk are children (~4%) and how many posts back their parent is."""
    rng = _rng(seed, 4, chunk)
    return rng.random(size) < 0.04, rng.integers(1, _FAMILY_REACH + 1, size)


def _family(plan: _Plan, chunk: int, start: int, ids: np.ndarray, carry: _Carry) -> tuple[list, np.ndarray]:
    """parent_id (None or an id up to 30 posts back) and has_children of one chunk's posts."""
    n = len(ids)
    pos = np.arange(start, start + n)
    child, back = _family_draws(plan.seed, chunk, n)
    child &= pos > 0
    parent_pos = np.maximum(0, pos - back)
    known = np.concatenate([carry.recent, ids])  # ids of positions start - len(recent) ...
    parent = np.where(child, known[parent_pos - (start - len(carry.recent))], 0)
    hit = parent_pos[child]
    stop = start + n
    if stop < plan.posts:  # children in the next chunk's first posts may have parents here
        nxt_child, nxt_back = _family_draws(plan.seed, chunk + 1, min(CHUNK_POSTS, plan.posts - stop))
        reach = slice(0, _FAMILY_REACH)
        nxt_parent = np.arange(stop, stop + len(nxt_child[reach])) - nxt_back[reach]
        hit = np.concatenate([hit, nxt_parent[nxt_child[reach] & (nxt_parent < stop)]])
    has_children = np.zeros(n, np.int64)
    has_children[hit[hit >= start] - start] = 1
    return [int(p) if c else None for p, c in zip(parent.tolist(), child.tolist())], has_children


def _post_columns(plan: _Plan, chunk: int, start: int, stop: int, artist: list[str],
                  carry: _Carry) -> dict[str, list]:
    rng = _rng(plan.seed, 1, chunk)
    n = stop - start
    created = _created_ms(plan, start, stop)
    ids = carry.last_id + np.cumsum(rng.geometric(0.8, n))  # gaps: deleted/expunged ids
    updated = np.minimum(created + rng.exponential(400 * 86_400_000, n).astype(np.int64), _DUMP_TIME_MS)
    created_s = _iso(created)
    width, height = _sizes(rng, n)
    ext_i = rng.choice(len(_EXTS), size=n, p=_EXT_P)
    ext = _EXTS[ext_i]
    size = (width * height * _EXT_BYTES_PER_PX[ext_i] * rng.lognormal(0, 0.4, n)).astype(np.int64)
    score, up, down, fav = _scores(rng, created)
    md5 = _md5s(rng, n)
    frac = np.arange(start, stop) / max(plan.posts - 1, 1)
    source, pixiv_id = _sources(rng, created_s, artist, frac)
    parent, has_children = _family(plan, chunk, start, ids, carry)
    banned = rng.random(n) < 0.003
    has_large = ((width > 850) & np.isin(ext, ["jpg", "png", "webp", "avif"])).astype(np.int64)
    rank = np.minimum(rng.zipf(1.4, n), 500_000)  # a few uploaders do most of the uploads
    urls = _urls(md5, ext.tolist(), has_large.tolist(), banned.tolist())
    carry.last_id = int(ids[-1])
    carry.recent = np.concatenate([carry.recent, ids])[-_FAMILY_REACH:]
    uploader = (rank * 104_729) % 999_983 + 1
    deleted = (rng.random(n) < 0.06).astype(np.int64)
    unknown = _unknown(ids)  # after every draw: the blocks never shift a random stream
    uploader[unknown], deleted[unknown] = 0, 0
    return {
        "id": ids.tolist(), "created_at": created_s,
        "uploader_id": uploader.tolist(), "source": source, "md5": md5,
        "parent_id": parent, "has_children": has_children.tolist(),
        "is_deleted": deleted.tolist(),
        "is_banned": (banned & ~unknown).astype(np.int64).tolist(), "pixiv_id": pixiv_id,
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
    duplicates this makes are rare and removed by the final unique. Common tags (a few hundred):
    exact, one uniform per (tag, post), 16 tags at a time to bound the temporary.
    """
    m = len(members)
    common = p >= 0.02
    k = rng.binomial(m, p[~common])
    posts = [members[rng.integers(0, m, int(k.sum()))]]
    tag_list = [np.repeat(tags[~common], k)]
    ct, cp = tags[common], p[common]
    for s in range(0, len(ct), 16):
        which, post = np.nonzero(rng.random((len(ct[s:s + 16]), m)) < cp[s:s + 16, None])
        posts.append(members[post])
        tag_list.append(ct[s:s + 16][which])
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


def _relations(plan: _Plan, chunk: int, start: int, cols: dict[str, list],
               artists: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(post position in the chunk, tag index) pairs, unique and sorted by post then tag."""
    rng = _rng(plan.seed, 2, chunk)
    n = len(cols["id"])
    types, counts, idx = plan.table.types, plan.table.counts, plan.idx
    parts = [_composition(rng, n, idx, counts)]
    for ttype, count_p in ((TagType.COPYRIGHT, [0.12, 0.78, 0.10]),
                           (TagType.CHARACTER, [0.35, 0.45, 0.13, 0.07])):
        pool = np.flatnonzero(types[:len(idx)] == ttype)
        parts.append(_pick_per_post(rng, n, count_p, pool, counts[pool].astype(float)))
    width, height = np.array(cols["image_width"]), np.array(cols["image_height"])
    parts.append(_size_meta(width, height, np.array(cols["file_ext"]), rng, idx))
    parts.append(_bernoulli(rng, np.arange(n), plan.drawn, plan.p[plan.drawn]))
    # NSFW tags only on q/e posts, at their real overall frequency.
    lewd = np.flatnonzero(np.array(cols["rating"]) >= Rating.QUESTIONABLE)
    if len(lewd):
        share = len(lewd) / n
        parts.append(_bernoulli(rng, lewd, plan.nsfw, np.minimum(plan.p[plan.nsfw] / share, 0.9)))
    parts.append(artists)
    tail_pos, tail_tag = plan.tail.between(start, start + n)
    parts.append((tail_pos - start, tail_tag))
    width_t = len(plan.table.names)
    key = np.concatenate([a.astype(np.int64) * width_t + b for a, b in parts])
    key.sort()  # sort + neighbour compare: far faster than np.unique's hash path here
    key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    return key // width_t, key % width_t


def _artists(plan: _Plan, chunk: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every post has an artist (the first is its main one); 7% have two or three."""
    rng = _rng(plan.seed, 3, chunk)
    real = plan.table.types[:len(plan.idx)]
    pool = np.flatnonzero(real == TagType.ARTIST)
    # np.repeat keeps posts in order, so a post's first row is its main artist.
    return _pick_per_post(rng, n, [0.0, 0.93, 0.06, 0.01], pool, plan.table.counts[pool].astype(float))


def _unknown(ids: np.ndarray) -> np.ndarray:
    """Bool per id: inside one of UNKNOWN_BLOCKS."""
    out = np.zeros(ids.size, dtype=bool)
    for lo, hi in UNKNOWN_BLOCKS:
        out |= (ids >= lo) & (ids < hi)
    return out


def _chunk(plan: _Plan, chunk: int, carry: _Carry) -> _Chunk:
    start = chunk * CHUNK_POSTS
    stop = min(start + CHUNK_POSTS, plan.posts)
    artists = _artists(plan, chunk, stop - start)
    first = np.searchsorted(artists[0], np.arange(stop - start))
    main = [plan.table.names[t] for t in artists[1][first].tolist()]
    cols = _post_columns(plan, chunk, start, stop, main, carry)
    rel_pos, rel_tag = _relations(plan, chunk, start, cols, artists)
    ids = np.array(cols["id"], np.int64)
    return _Chunk(cols, ids[rel_pos], rel_tag + 1)


def iter_chunks(seed: int, posts: int, table: TagTable | None = None,
                tail_tags: int | None = None) -> tuple[TagTable, Iterator[_Chunk]]:
    """The full tag table (real tags, then `tail_tags` tail tags: default `default_tail_tags`)
    and an iterator over the sample's chunks, in id order."""
    table = table or load_tag_table()
    plan = _plan(seed, posts, table, default_tail_tags(posts) if tail_tags is None else tail_tags)

    def chunks() -> Iterator[_Chunk]:
        carry = _Carry()
        for j in range(plan.chunks):
            yield _chunk(plan, j, carry)

    return plan.table, chunks()


def generate(seed: int, posts: int, table: TagTable | None = None, tail_tags: int | None = None) -> _Sample:
    """All rows of a sample DB in memory (for small samples and benchmarks: the writer streams)."""
    full, chunks = iter_chunks(seed, posts, table, tail_tags)
    parts = list(chunks)
    cols = {name: [v for part in parts for v in part.posts[name]] for name in parts[0].posts}
    rel_post = np.concatenate([p.rel_post for p in parts])
    rel_tag = np.concatenate([p.rel_tag for p in parts])
    popularity = np.bincount(rel_tag - 1, minlength=len(full.names))
    used = np.flatnonzero(popularity)
    return _Sample(cols, rel_post, rel_tag, used, popularity[used])

# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _index_statements() -> list[str]:
    """The published CREATE INDEX statements, verbatim (sqlite_master keeps the text)."""
    statements = [s[s.index("CREATE"):].strip() for s in published_schema_sql().split(";") if "CREATE" in s]
    return [s for s in statements if s.split("(")[0].split()[1] in ("INDEX", "UNIQUE")]


def _index_name(statement: str) -> str:
    return statement.split('"')[1]


# Rows per INSERT statement: many rows a statement (`VALUES (?,?),(?,?),...`) bind and step ~3x
# faster than one row a statement (1M posts: 12.9 -> 4 s for the relations), and insert the same
# rows in the same order, so ids and bytes are those of row-by-row inserts.
_ROWS_PER_INSERT = 512
_POST_WIDTH = 27  # columns of the published post table (the keys of a chunk's `posts`)
# Page cache (KiB) during the load, and while posttagrelation_tag_id is built (see _load).
_LOAD_CACHE_KIB = 32768
_SORT_CACHE_KIB = 4096


def _insert_sql(table: str, columns: list[str], rows: int) -> str:
    one = f"({', '.join('?' * len(columns))})"
    return f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES {", ".join([one] * rows)}'


@dataclass(frozen=True)
class _Batch:
    """One chunk as the writer binds it: the values of whole multi-row statements (flattened,
    one list per statement), then the last rows, one tuple per row."""

    posts: int
    columns: list[str]  # post columns, in the published order
    post_groups: list[list]
    post_rest: list[tuple]
    rel_groups: list[list]
    rel_rest: list[tuple]
    tag_counts: np.ndarray  # relations per tag index


def _batch(chunk: _Chunk, post_rows: int, rel_rows: int, tags: int) -> _Batch:
    cols = list(chunk.posts.values())
    n, width = len(cols[0]), len(cols)
    assert width == _POST_WIDTH, width
    flat = list(chain.from_iterable(zip(*cols)))
    whole, step = n // post_rows * post_rows, post_rows * width
    post_groups = [flat[i:i + step] for i in range(0, whole * width, step)]
    post_rest = list(zip(*(c[whole:] for c in cols)))
    pairs = np.stack([chunk.rel_post, chunk.rel_tag], axis=1)
    rel_whole = len(pairs) // rel_rows * rel_rows
    return _Batch(n, list(chunk.posts), post_groups, post_rest,
                  pairs[:rel_whole].reshape(-1, 2 * rel_rows).tolist(),
                  [tuple(r) for r in pairs[rel_whole:].tolist()],
                  np.bincount(chunk.rel_tag - 1, minlength=tags))


def _batches(chunks: Iterator[_Chunk], post_rows: int, rel_rows: int, tags: int) -> Ahead[_Batch]:
    """The chunks as batches, made in a thread of their own one chunk ahead of the writer
    (kohaku_data/ahead.py): numpy and sqlite release the GIL for much of their work, so
    generation and inserts overlap on two cores. The same batches in the same order as made
    inline: the writer alone gives ids. Closing it (the writer failed, Ctrl-C) stops the thread."""

    def made() -> Iterator[_Batch]:
        for chunk in chunks:
            yield _batch(chunk, post_rows, rel_rows, tags)
            del chunk  # not kept alive while the next one is generated

    return Ahead(made, 1, "kdata-sample-chunks")


def _load(conn: sqlite3.Connection, table: TagTable, chunks: Iterator[_Chunk], posts: int, log) -> None:
    indexes = _index_statements()
    for statement in indexes:
        conn.execute(f'DROP INDEX IF EXISTS "{_index_name(statement)}"')
    # Indexes whose keys arrive in order (posttagrelation_post_id: rows are inserted sorted by
    # post, then tag) or that are small (tag_name) are kept up to date during the load, by the
    # writer while the next chunk is generated (1M posts: 5 s less CPU than sorting afterwards);
    # only posttagrelation_tag_id, in random order, is built by sorting once all rows are in.
    # Created in the published order as before: sqlite_master reads the same.
    late = [s for s in indexes if _index_name(s) == "posttagrelation_tag_id"]
    for statement in indexes:
        if statement not in late:
            conn.execute(statement)
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    rel_rows = max(1, min(_ROWS_PER_INSERT, limit // 2))
    post_rows = max(1, min(_ROWS_PER_INSERT, limit // _POST_WIDTH))
    rel_many = _insert_sql("posttagrelation", ["post_id", "tag_id"], rel_rows)
    rel_one = _insert_sql("posttagrelation", ["post_id", "tag_id"], 1)
    popularity = np.zeros(len(table.names), np.int64)
    relations, done = 0, 0
    # Ids are assigned by sqlite in insertion order (1..R): rows sorted by post, then tag.
    with _batches(chunks, post_rows, rel_rows, len(table.names)) as batches:
        for batch in batches:
            conn.executemany(_insert_sql("post", batch.columns, post_rows), batch.post_groups)
            conn.executemany(_insert_sql("post", batch.columns, 1), batch.post_rest)
            conn.executemany(rel_many, batch.rel_groups)
            conn.executemany(rel_one, batch.rel_rest)
            popularity += batch.tag_counts
            relations += len(batch.rel_groups) * rel_rows + len(batch.rel_rest)
            done += batch.posts
            log(f"{done:,}/{posts:,} posts, {relations:,} tag relations inserted")
    used = np.flatnonzero(popularity)
    conn.executemany(
        'INSERT INTO "tag" (id, name, type, popularity) VALUES (?, ?, ?, ?)',
        ((i + 1, table.names[i], int(table.types[i]), int(c))
         for i, c in zip(used.tolist(), popularity[used].tolist())),
    )
    log(f"{len(used):,} tags inserted")
    # The index build sorts with a small page cache: sqlite's sorter sorts runs of cache_size
    # bytes in memory, and runs that fit the CPU caches sort far faster than 256 MB ones, though
    # more of them are merged (7.8M posts, 194M rows: 141 s wall / 215 s CPU with 256 MB, 99 /
    # 121 with 32 MB, 55 / 84 with 1-4 MB; 1M posts: 12 -> 6 s).
    conn.execute(f"PRAGMA cache_size=-{_SORT_CACHE_KIB}")
    for statement in late:
        conn.execute(statement)
    log("indexes built")
    used_list = used.tolist()
    _write_aliases(conn, [table.names[i] for i in used_list], [table.aliases[i] for i in used_list])
    _write_unknown(conn)


def _write_unknown(conn: sqlite3.Connection) -> int:
    """The posts of UNKNOWN_BLOCKS into `kdata_post_unknown`, where migrations made it."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'kdata_post_unknown'").fetchone():
        return 0
    before = conn.total_changes
    for lo, hi in UNKNOWN_BLOCKS:
        conn.execute('INSERT OR IGNORE INTO "kdata_post_unknown" (post_id, fields) '
                     "SELECT id, ? FROM post WHERE id >= ? AND id < ?", (UNKNOWN_FIELDS, lo, hi))
    return conn.total_changes - before


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


def write_sample_db(path: Path, posts: int, seed: int = 0, *, progress: bool = False,
                    tail_tags: int | None = None) -> None:
    """Write a Danbooru2023-schema sqlite with `posts` realistic posts, deterministic per seed.

    `tail_tags`: synthetic long-tail tags beside the real ones (None: `default_tail_tags(posts)`,
    about a million names at full size, none below 100k posts). Posts are generated and written
    a chunk at a time, so memory stays about a gigabyte at any size.
    A new file is written to a temporary name and moved into place. An existing file that has
    the published tables but no rows (e.g. made by `kdata db init`, migrations applied) is
    filled in place, aliases included; a file with posts is never overwritten.
    """
    path = Path(path)
    if posts < 1:
        raise SampleError(f"--posts must be at least 1 (got {posts})")
    if tail_tags is not None and tail_tags < 0:
        raise SampleError(f"--tail-tags must be 0 or more (got {tail_tags})")
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
    table, chunks = iter_chunks(seed, posts, load_tag_table(), tail_tags)
    target = path if existing else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(target, table, chunks, posts, fresh=not existing, log=log)
        if not existing:
            os.replace(target, path)
    except BaseException:
        if not existing:
            target.unlink(missing_ok=True)
        raise
    log(f"wrote {path}")


def _write(target: Path, table: TagTable, chunks: Iterator[_Chunk], posts: int, *, fresh: bool, log) -> None:
    if fresh:
        target.unlink(missing_ok=True)
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        if fresh:
            conn.executescript(published_schema_sql())
        # No journal while loading: a crash leaves a temp file we delete, never a half-filled DB.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        # The load appends (rows, posttagrelation_post_id) and fills the 1M-name tag_name index:
        # 32 MB of page cache does it as fast as 256 MB did (and the index build wants less).
        conn.execute(f"PRAGMA cache_size=-{_LOAD_CACHE_KIB}")
        # The index build at the end sorts ~190M relations at full size: let sqlite's sorter
        # use helper threads (same rows and bytes, the sort only runs in parallel).
        conn.execute(f"PRAGMA threads={min(os.cpu_count() or 1, 4)}")
        conn.execute("BEGIN")
        _load(conn, table, chunks, posts, log)
        conn.execute("COMMIT")
    finally:
        conn.close()
