"""The long tail of a full-size tag table: synthetic tags on a handful of posts each.

Danbooru has about a million tag names; past the ~20,000 most used (the bundled CSV) nearly all
are artists, characters and copyrights with a few posts, and general tags hardly anyone uses.
A sample without that tail hides the cost of a 1M-row tag table (reading, mapping, caption
lookups), so big samples get one: `default_tail_tags(posts)` names per posts (about 1M at
Danbooru2023's 7.8M posts), each on a zeta-distributed number of posts (61% on one post, 87% on
at most five, capped at 1,000; thinned when more tail tags than the rule are asked for), clustered in time (an artist is active for a while), so the
tail's relations of any post range can be generated on their own.

Names are built from syllables by a bijection of the tail index (unique by construction, and
never a real tag name: real names come first and shadow nothing here — see `tail_names`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kohaku_data.db.enums import TagType

# Below this many posts a sample keeps only the real tags: small samples stay readable and
# their tag mix exactly that of the bundled list (the tests' realism checks rely on it).
TAIL_FROM_POSTS = 100_000
TAIL_TAGS_PER_POST = 1 / 8  # 7.8M posts -> 975k tail tags, ~1M tag names in all
_ZETA_A = 2.0
_MAX_POSTS_PER_TAG = 1000
_TYPES = np.array([TagType.ARTIST, TagType.GENERAL, TagType.CHARACTER, TagType.COPYRIGHT], np.int8)
_TYPE_P = (0.45, 0.30, 0.17, 0.08)
_SYLLABLES = (
    "a i u e o ka ki ku ke ko sa shi su se so ta chi tsu te to na ni nu ne no ha hi fu he ho ma "
    "mi mu me mo ya yu yo ra ri ru re ro wa n ga gi gu ge go za ji zu ze zo ba bi bu be bo pa pi "
    "pu pe po kyo ryu sho"
).split()


def default_tail_tags(posts: int) -> int:
    """The size rule: no tail below `TAIL_FROM_POSTS` posts, else posts / 8 tail tags."""
    return int(posts * TAIL_TAGS_PER_POST) if posts >= TAIL_FROM_POSTS else 0


@dataclass(frozen=True)
class Tail:
    """Tail tags (index k has tag index `first + k`) and their relations, sorted by post position."""

    names: list[str]
    types: np.ndarray  # TagType values
    counts: np.ndarray  # posts each tag was drawn for (duplicates removed later: popularity ≤ this)
    positions: np.ndarray  # post positions (0..posts-1), sorted
    tags: np.ndarray  # tag indices (into the whole table) of those relations

    def between(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, tag indices) of the relations of posts start..stop-1."""
        lo, hi = np.searchsorted(self.positions, [start, stop])
        return self.positions[lo:hi], self.tags[lo:hi]


def _word(index: np.ndarray, syllables: int) -> list[str]:
    """Mixed-radix digits of `index` spelled in syllables (`syllables` of them: a bijection)."""
    base = len(_SYLLABLES)
    parts = []
    rest = index.copy()
    for _ in range(syllables):
        parts.append(rest % base)
        rest //= base
    table = np.array(_SYLLABLES)
    words = table[parts[0]]
    for digits in parts[1:]:
        words = np.char.add(words, table[digits])
    return words.tolist()


def tail_names(count: int, types: np.ndarray) -> list[str]:
    """`count` unique names shaped like Danbooru's: `given_family` for artists and characters,
    a character's series in parentheses for some, plain words for general tags and copyrights.
    Every name carries its index in its syllables, so names never collide."""
    index = np.arange(count, dtype=np.int64)
    base = len(_SYLLABLES) ** 2
    first = _word(index % base, 2)
    second = _word(index // base, 2)
    names = []
    for f, s, t in zip(first, second, types.tolist()):
        if t == TagType.CHARACTER:
            names.append(f"{f}_{s}_(tail)")
        elif t == TagType.COPYRIGHT:
            names.append(f"{f}_{s}_(series)")
        elif t == TagType.GENERAL:
            names.append(f"{f}_{s}_pose")
        else:
            names.append(f"{f}_{s}")
    return names


def make_tail(rng: np.random.Generator, count: int, posts: int, first: int) -> Tail:
    """`count` tail tags over `posts` posts; tag indices start at `first`."""
    if count == 0:
        empty = np.empty(0, np.int64)
        return Tail([], np.empty(0, np.int8), empty, empty, empty)
    types = _TYPES[rng.choice(len(_TYPES), size=count, p=_TYPE_P)]
    counts = np.minimum(rng.zipf(_ZETA_A, count), _MAX_POSTS_PER_TAG)
    # More tail tags than the size rule gives (a 1M-row tag table on a small sample): each tag
    # keeps a share of its posts (at least one, or it would not be in the tag table), so the
    # tail adds about as many relations per post as at full size, not more.
    share = min(1.0, posts * TAIL_TAGS_PER_POST / count)
    if share < 1.0:
        counts = np.maximum(rng.binomial(counts, share), 1)
    counts = np.minimum(counts, posts).astype(np.int64)
    # Each tag's posts lie in a window around its own moment, ~50 posts of the sequence per use.
    centre = rng.integers(0, posts, count)
    window = np.maximum(counts * 50, 200)
    tags = np.repeat(np.arange(first, first + count, dtype=np.int64), counts)
    spread = (rng.random(len(tags)) - 0.5) * np.repeat(window, counts)
    positions = np.clip(np.repeat(centre, counts) + spread.astype(np.int64), 0, posts - 1)
    order = np.argsort(positions, kind="stable")
    return Tail(tail_names(count, types), types, counts, positions[order], tags[order])
