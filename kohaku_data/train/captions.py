"""Caption augmentation at read time that a resume replays exactly: `CaptionPolicy`.

Trainers shuffle tags, drop tags and drop groups at training time from a global RNG, so a
resumed run (or another `num_workers`) sees other captions. Here every draw comes from a
generator seeded by (seed, epoch, sample key) alone — `random.Random` of a blake2b digest — so
sample k gets the same caption in epoch e whatever the worker count, the world size of the same
global batch, or a `state_dict` / `load_state_dict` mid-epoch; and another caption in another
epoch. Per sample, in this order:

1. a weighted choice among the stored variants (`variants`, names of the json's `captions`;
   empty: the `.txt`);
2. for a caption in kdata's layout (`kept, |||rest`): group dropout (`group_dropout`, per rest
   group: `general`, `meta`, `special` = the year/rating/quality/attached words, found by the
   json's tag lists), then tag dropout (each rest tag with probability `tag_dropout`), then a
   shuffle of the rest (`shuffle`); the kept part is never shuffled, dropped or cut. For an
   ordered variant named in `ordered` (`ordered_variants(lock["recipe"])` lists the recipe's,
   with their artist prefix) the same draws act on its own groups: each tag is placed by the
   sample's json (the kohaku caption's kept part → kept; `tags.meta` → meta; `tags.general` →
   general; `quality` / `year_tag` / `rating_tag` / `attached_tags` → special, each its own
   group), group and tag dropout remove meta/general/special tags, and the shuffle permutes
   each group's tags among that group's own places only: the fixed group order stays, kept and
   unplaced tags (e.g. artifact tags) never move. xml, text and mixed variants (and ordered
   ones not named) are used as stored;
3. `max_tokens` with a `count` function (e.g. `kohaku_data.captions.tokens.ClipTokenizer().count`):
   whole rest tags are dropped by `drop_order`, the rule of the build's budgets, until it fits
   (an ordered variant: its meta/general/special tags, where they stand).

The result has the separator removed (`kept, rest`), as sd-scripts gives it to the text encoder.
Pure Python: nothing of the build machinery, no torch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

KEEP_SEPARATOR = "|||"
REST_GROUPS = ("general", "meta", "special")
# an ordered caption's droppable groups in the build budget's order (variants.REST_GROUPS)
_FINE_GROUPS = ("general", "meta", "year", "rating", "quality", "attached")


def ordered_variants(recipe: Mapping[str, Any]) -> dict[str, str]:
    """The ordered variants of a recipe as `dataset.lock` records it (`lock["recipe"]`): name →
    artist prefix, what `CaptionPolicy(ordered=…)` takes."""
    add = ((recipe.get("caption") or {}).get("variants") or {}).get("add") or []
    return {v["name"]: v.get("artist_prefix", "") for v in add if v.get("kind") == "ordered"}


def raw_name(text: str) -> str:
    """A caption tag back to its DB name (`kei \\(keigarou\\)` → `kei_(keigarou)`)."""
    return text.replace("\\(", "(").replace("\\)", ")").replace(" ", "_")


def drop_order(rest: Sequence[str], meta: Sequence[str], general: Sequence[str]) -> list[int]:
    """Positions of `rest` (the tags after the keep separator) in the order a budget drops them:
    the meta tags, then the general tags, each in the order of `meta` / `general` (the post's DB
    names by popularity: most frequent, least informative first), then every other tag from the
    end of `rest` backwards (attached bands, quality, rating, year in kdata's layout)."""
    rank: dict[str, int] = {}
    for k, name in enumerate((*meta, *general)):
        rank.setdefault(name, k)
    known = sorted((rank[raw_name(t)], i) for i, t in enumerate(rest) if raw_name(t) in rank)
    others = [i for i in range(len(rest) - 1, -1, -1) if raw_name(rest[i]) not in rank]
    return [i for _, i in known] + others


def fit_rest(kept: Sequence[str], rest: Sequence[str], order: Sequence[int], max_tokens: int,
             count: Callable[[str], int], separator: str = ", ") -> list[str]:
    """`rest` without the fewest tags of `order`'s front that make `kept + rest` fit."""
    dropped: set[int] = set()

    def text() -> str:
        return separator.join([*kept, *(t for i, t in enumerate(rest) if i not in dropped)])

    for i in order:
        if count(text()) <= max_tokens:
            break
        dropped.add(i)
    return [t for i, t in enumerate(rest) if i not in dropped]


def rng_for(seed: int, epoch: int, key: int) -> random.Random:
    """The generator of one sample in one epoch: a function of (seed, epoch, key) only."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def split_tags(caption: str, separator: str = KEEP_SEPARATOR, joiner: str = ", ") -> tuple[list[str], list[str]] | None:
    """(kept tags, rest tags) of a caption in kdata's layout; None when it has no separator."""
    if separator not in caption:
        return None
    kept, rest = caption.split(separator, 1)
    tags = joiner.strip()

    def parts(text: str) -> list[str]:
        return [t.strip() for t in text.split(tags) if t.strip()] if tags else text.split()

    return parts(kept), parts(rest)


@dataclass(frozen=True)
class CaptionPolicy:
    """What the reader does to a sample's caption; see the module docstring. `seed` is the
    policy's own (independent of the sampler's)."""

    seed: int = 0
    variants: Mapping[str, float] = field(default_factory=dict)  # name → weight; {} = the .txt
    shuffle: bool = True
    tag_dropout: float = 0.0
    group_dropout: Mapping[str, float] = field(default_factory=dict)  # general / meta / special
    max_tokens: int | None = None
    count: Callable[[str], int] | None = None
    separator: str = KEEP_SEPARATOR
    joiner: str = ", "
    ordered: Mapping[str, str] = field(default_factory=dict)  # ordered variant → artist prefix: augmented too

    def __post_init__(self) -> None:
        bad = [g for g in self.group_dropout if g not in REST_GROUPS]
        if bad or not 0 <= self.tag_dropout <= 1 or any(not 0 <= p <= 1 for p in self.group_dropout.values()):
            raise ValueError(f"group_dropout takes {', '.join(REST_GROUPS)} and probabilities in 0..1")
        if self.max_tokens is not None and self.count is None:
            raise ValueError("max_tokens needs count=, e.g. kohaku_data.captions.tokens.ClipTokenizer().count")
        if any(w < 0 for w in self.variants.values()) or (self.variants and not sum(self.variants.values())):
            raise ValueError("variant weights must be >= 0 and not all 0")

    def __call__(self, sample: Mapping[str, Any], epoch: int) -> str:
        """The caption of `sample` (a `KdataDataset` item: `key`, `caption`, the json fields) in `epoch`."""
        rng = rng_for(self.seed, epoch, int(sample["key"]))
        name, caption = self._pick(sample, rng)
        if name in self.ordered:
            return self._ordered(caption, sample, self.ordered[name], rng)
        split = split_tags(caption, self.separator, self.joiner)
        if split is None:
            return caption
        kept, rest = split
        tags = sample.get("tags") or {}
        meta, general = list(tags.get("meta", [])), list(tags.get("general", []))
        rest = self._augment(rest, meta, general, rng)
        if self.max_tokens is not None and self.count is not None:
            rest = fit_rest(kept, rest, drop_order(rest, meta, general), self.max_tokens, self.count, self.joiner)
        return self.joiner.join([*kept, *rest])

    def _pick(self, sample: Mapping[str, Any], rng: random.Random) -> tuple[str | None, str]:
        """(variant name, caption); the `.txt`'s name is the stored variant it equals (None: none)."""
        stored = sample.get("captions") or {}
        names = [n for n in sorted(self.variants) if self.variants[n] > 0]
        if not names:
            txt = str(sample["caption"])
            return next((n for n in sorted(stored) if stored[n] == txt), None), txt
        missing = [n for n in names if n not in stored]
        if missing:
            raise KeyError(f"sample {sample['key']} stores no caption variant {missing[0]!r} (it has {sorted(stored)})")
        weights = [self.variants[n] for n in names]
        name = rng.choices(names, weights)[0]
        return name, str(stored[name])

    def _ordered(self, caption: str, sample: Mapping[str, Any], prefix: str, rng: random.Random) -> str:
        """Group dropout, tag dropout, in-group shuffle and budget on an ordered variant (module doc)."""
        sep = self.joiner.strip()
        tags = [t.strip() for t in caption.split(sep) if t.strip()] if sep else caption.split()
        kohaku = split_tags(str((sample.get("captions") or {}).get("kohaku", "")), self.separator, self.joiner)
        kept = set(kohaku[0]) if kohaku else set()
        j = sample.get("tags") or {}
        meta, general = list(j.get("meta", [])), list(j.get("general", []))
        named = {"meta": set(meta), "general": set(general)}
        special = {str(sample.get(k) or ""): k.removesuffix("_tag") for k in ("quality", "year_tag", "rating_tag")}
        special.update({t: "attached" for t in sample.get("attached_tags") or []})
        special.pop("", None)

        def group_of(tag: str) -> str | None:
            bare = tag[len(prefix):] if prefix and tag.startswith(prefix) else tag
            if tag in kept or bare in kept:
                return None
            raw = raw_name(tag)
            return next((g for g, names in named.items() if raw in names), special.get(tag))

        fine = [group_of(t) for t in tags]
        coarse = [None if g is None else g if g in named else "special" for g in fine]
        gone = {g for g in REST_GROUPS if rng.random() < self.group_dropout.get(g, 0.0)}
        alive = [i for i, g in enumerate(coarse) if g not in gone]
        if self.tag_dropout:
            alive = [i for i in alive if coarse[i] is None or rng.random() >= self.tag_dropout]
        out = {i: tags[i] for i in alive}
        if self.shuffle:
            for g in _FINE_GROUPS:
                places = [i for i in alive if fine[i] == g]
                moved = [out[i] for i in places]
                rng.shuffle(moved)
                out.update(zip(places, moved))
        if self.max_tokens is not None and self.count is not None:
            rest = sorted((i for i in out if fine[i] is not None), key=lambda i: (_FINE_GROUPS.index(fine[i]), i))
            for k in drop_order([out[i] for i in rest], meta, general):
                if self.count(self.joiner.join(out[i] for i in sorted(out))) <= self.max_tokens:
                    break
                del out[rest[k]]
        return self.joiner.join(out[i] for i in sorted(out))

    def _augment(self, rest: list[str], meta: list[str], general: list[str], rng: random.Random) -> list[str]:
        groups = {"meta": set(meta), "general": set(general)}

        def group_of(tag: str) -> str:
            raw = raw_name(tag)
            return next((g for g, names in groups.items() if raw in names), "special")

        gone = {g for g in REST_GROUPS if rng.random() < self.group_dropout.get(g, 0.0)}
        out = [t for t in rest if group_of(t) not in gone]
        if self.tag_dropout:
            out = [t for t, u in zip(out, [rng.random() for _ in out]) if u >= self.tag_dropout]
        if self.shuffle:
            rng.shuffle(out)
        return out


__all__ = ["CaptionPolicy", "drop_order", "fit_rest", "ordered_variants", "raw_name", "rng_for", "split_tags"]
